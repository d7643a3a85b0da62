"""Submitting a rendered script: write it where sbatch runs, then ``sbatch --parsable``, once.

The script is written through the transport (so over SSH it lands on the cluster) and kept:
it is the record of exactly what ran, next to the job's logs. ``sbatch_argv`` gives the same
command for ``--dry-run``, which prints it with ``format_command`` instead of running it.

**Submitting exactly once** over a transport that can lose a command's outcome (``lossy``: SSH).
The connection drops after ``sbatch`` was sent: did SLURM get the job? Re-running ``sbatch``
blindly may submit it twice; giving up may lose it. So ``submit`` sends it through
``submit_once``: every submission carries a **token** (random per call, or chosen by the caller
for idempotence across invocations) and ``sbatch`` runs inside a small POSIX ``sh`` wrapper on
the cluster side, which keeps a marker per token in a marker folder (default
``$HOME/.cache/hpcpipe/submissions``; the home folder of a login node is shared by all login
nodes on most clusters):

1. the script on stdin, if any, is first saved completely (byte count checked), so a
   connection cut while sending it can never submit a truncated script;
2. ``mkdir TOKEN.lock`` claims the token -- atomic, also on NFS; only the claimer runs
   ``sbatch``, with SIGHUP/SIGPIPE ignored and its output going to files, so a dropped
   connection does not stop it;
3. sbatch's stdout, stderr and exit code are written to ``TOKEN.out/.err/.rc`` (``.rc`` last,
   by rename), then printed back.

A retry (same token, new connection) finds the lock taken and, instead of submitting, waits
for ``TOKEN.rc`` and returns the first attempt's output: the job id of the one job. If the
claimer died without an ``.rc`` (killed, node rebooted) the retry reports that the outcome
is unknown and names the marker, instead of guessing. The transport itself never repeats the
wrapper (it is not told ``repeatable``): the retries, their back-off and their messages are
this module's. It works over any ``Transport`` (``LocalTransport`` too: same files, no network).
"""
from __future__ import annotations

import logging
import re
import shlex
import time
import uuid
from typing import Sequence

from ..errors import BackendError
from ..transport import ConnectionLost, HostUnreachable, Result, Transport

_log = logging.getLogger("hpcpipe.slurm.submit")

_PARSABLE = re.compile(r"^(\d+)(?:;(\S+))?$")


def sbatch_argv(script_path: str, extra: Sequence[str] = ()) -> list[str]:
    """The argv that submits ``script_path`` (options are in the script's #SBATCH lines)."""
    return ["sbatch", "--parsable", *extra, script_path]


def format_command(argv: Sequence[str]) -> str:
    """A shell-pasteable line for an argv (what ``--dry-run`` prints)."""
    return shlex.join(argv)


def parse_job_id(stdout: str) -> str:
    """``123`` or ``123;cluster`` (federations/multi-cluster) -> ``"123"``.

    sbatch may print warnings before the id on stdout on some sites, so the last
    non-empty line is used.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        m = _PARSABLE.match(lines[-1])
        if m:
            return m.group(1)
    raise BackendError(f"sbatch printed no job id: {stdout.strip()!r}")


def submit(transport: Transport, script_text: str, script_path: str, extra: Sequence[str] = (),
           timeout: float = 120.0, *, token: str | None = None, marker_dir: str | None = None) -> str:
    """Write ``script_text`` to ``script_path`` (executable) and submit it; returns the job id.

    Over a ``lossy`` transport, or when a ``token`` is given (the same token returns the first
    call's job instead of a second one), sbatch goes through ``submit_once``; on this machine it
    runs directly. Raises BackendError with sbatch's own message when SLURM refuses the job.
    """
    transport.write_file(script_path, script_text, mode=0o755)
    argv = sbatch_argv(script_path, extra)
    if transport.lossy or token is not None:
        res = submit_once(transport, argv, token=token, marker_dir=marker_dir, timeout=timeout)
    else:
        res = transport.run(argv, timeout=timeout)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip() or f"exit code {res.returncode}"
        raise BackendError(f"sbatch {script_path} failed: {msg}")
    return parse_job_id(res.stdout)


#: a line the wrapper prints last on stderr: "@@hpcpipe-submit <ran|again|unknown|...> <rc>"
_TRAILER = re.compile(r"(?:^|\n)@@hpcpipe-submit (\w+) (-?\d+)\n?\Z")

# $1 marker dir ('' = default)  $2 token  $3 seconds to wait for another attempt
# $4 byte count of stdin (-1 = no stdin)  $5.. the sbatch argv
WRAPPER = r'''
trap '' HUP PIPE
d=$1 t=$2 w=$3 n=$4; shift 4
[ -n "$d" ] || d="${HOME:-/tmp}/.cache/hpcpipe/submissions"
case "$t" in ''|*/*|.*) echo "bad token" >&2; echo "@@hpcpipe-submit error 96" >&2; exit 96 ;; esac
mkdir -p "$d" || { echo "cannot create the marker folder $d" >&2; echo "@@hpcpipe-submit error 97" >&2; exit 97; }
m="$d/$t" h=$(hostname 2>/dev/null || echo '?')
inp=/dev/null
if [ "$n" -ge 0 ]; then
  cat > "$m.in.$$"
  got=$(wc -c < "$m.in.$$" | tr -d ' ')
  if [ "$got" != "$n" ]; then rm -f "$m.in.$$"; echo "stdin truncated ($got of $n bytes)" >&2
    echo "@@hpcpipe-submit error 95" >&2; exit 95; fi
  inp="$m.in.$$"
fi
if mkdir "$m.lock" 2>/dev/null; then
  echo "$h $$" > "$m.lock/owner"
  "$@" < "$inp" > "$m.out.tmp" 2> "$m.err.tmp"
  rc=$?
  mv -f "$m.out.tmp" "$m.out"; mv -f "$m.err.tmp" "$m.err"
  echo "$rc" > "$m.rc.tmp"; mv -f "$m.rc.tmp" "$m.rc"
  state=ran
  find "$d" -mindepth 1 -maxdepth 1 -mtime +14 -exec rm -rf {} + 2>/dev/null
else
  state=again i=0
  while [ ! -f "$m.rc" ]; do
    set -- $(cat "$m.lock/owner" 2>/dev/null)
    if [ "${1:-}" = "$h" ] && [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && [ ! -f "$m.rc" ]; then
      echo "the earlier attempt (pid $2 on $h) ended without recording sbatch's result: $m.*" >&2
      echo "@@hpcpipe-submit unknown 94" >&2; exit 94
    fi
    i=$((i + 1))
    if [ $i -gt $((w * 5)) ]; then
      echo "no result from the earlier attempt after $w s: $m.*" >&2
      echo "@@hpcpipe-submit unknown 94" >&2; exit 94
    fi
    sleep 0.2 2>/dev/null || sleep 1
  done
fi
[ "$inp" = /dev/null ] || rm -f "$inp"
rc=$(cat "$m.rc")
cat "$m.out"; cat "$m.err" >&2
echo "@@hpcpipe-submit $state $rc" >&2
exit "$rc"
'''


def new_token() -> str:
    """A fresh submission token (safe as a file name and in a job name)."""
    return "hp" + uuid.uuid4().hex


def submit_once(transport: Transport, argv: list[str], *, input: str | None = None,
                token: str | None = None, marker_dir: str | None = None, attempts: int = 4,
                timeout: float = 120.0, wait: int = 60) -> Result:
    """Run one ``sbatch`` argv on ``transport`` so that it submits at most once.

    Returns sbatch's own ``Result`` (``argv`` as given, its stdout -- the job id with
    ``--parsable`` -- stderr and exit code), whether it came from the first attempt or was
    recovered by a retry after a dropped connection. ``token``: reuse one to make repeated
    calls return the first call's job instead of submitting again. ``marker_dir``: where the
    markers live on the cluster (default ``$HOME/.cache/hpcpipe/submissions``). Connection
    faults are retried up to ``attempts`` times; then ``BackendError`` names the token and
    marker so the user can check by hand.
    """
    token = token or new_token()
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", token):
        raise BackendError(f"bad submission token {token!r}")
    n = -1 if input is None else len(input.encode())
    wrapped = ["sh", "-c", WRAPPER, "hpcpipe-submit", marker_dir or "", token, str(int(wait)), str(n),
               *[str(a) for a in argv]]
    where = f"{marker_dir or '$HOME/.cache/hpcpipe/submissions'}/{token}.*"
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            res = transport.run(wrapped, input=input, timeout=timeout + wait)  # retried here, same token
        except (ConnectionLost, HostUnreachable) as exc:
            last = exc
            _log.warning("sbatch via %s (token %s): %s; attempt %d/%d", transport.name, token, exc,
                         attempt, attempts)
            if attempt < attempts:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
            continue
        except BackendError as exc:  # e.g. timed out: the outcome is unknown, do not guess
            raise BackendError(f"{exc} (submission token {token}: see {where} on the cluster; "
                               f"submitting again with the same token cannot duplicate it)") from None
        m = _TRAILER.search(res.stderr)
        if not m:
            raise BackendError(f"sbatch wrapper on {transport.name} failed (exit {res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[-500:]}")
        state = m.group(1)
        stderr = res.stderr[:m.start()] + ("\n" if m.group(0).startswith("\n") else "")
        if state in ("error", "unknown"):
            raise BackendError(f"sbatch via {transport.name} (token {token}): {stderr.strip()}")
        if state == "again":
            _log.warning("sbatch via %s (token %s) had already run: reusing its result, not submitting again",
                         transport.name, token)
        return Result(list(argv), int(m.group(2)), res.stdout, stderr)
    raise BackendError(f"sbatch via {transport.name}: connection failed {attempts} times ({last}); "
                       f"it may or may not have submitted: see {where} on the cluster "
                       f"(submission token {token})")
