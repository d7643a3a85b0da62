"""The local transport: plain subprocesses (the SSH one is tested against a real sshd in tests/ssh)."""
from __future__ import annotations

import pytest

from hpcpipe.errors import BackendError
from hpcpipe.transport import LocalTransport


def test_a_command_that_does_not_end_in_time_is_reported_with_the_last_thing_it_said():
    """sbatch against a controller at its MaxJobCount retries for good, and says why only on
    stderr: that line reaches the user's one-line error."""
    said = "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"
    with pytest.raises(BackendError, match=r"sh did not answer within 1 s \(it said: sbatch: error: Slurm "
                                           r"temporarily unable to accept job, sleeping and retrying\)"):
        LocalTransport().run(["sh", "-c", f"echo 'sbatch: error: Batch job submission failed' >&2; "
                                          f"echo '{said}' >&2; sleep 10"], timeout=1)
    with pytest.raises(BackendError, match=r"^sleep did not answer within 1 s$"):  # nothing said
        LocalTransport().run(["sleep", "10"], timeout=1)
