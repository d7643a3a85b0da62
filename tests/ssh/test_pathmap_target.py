"""Path mapping and --remote targets (no network needed, except where marked)."""
from __future__ import annotations

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.ssh import PathMap, RemoteTarget, parse_spec, resolve_remote

RULES = {"/mnt/lab/Subjects": "/cluster/lab/Subjects", "/mnt/lab": "/cluster/labroot",
         "/mnt/lab/Subjects/special": "/fast/special"}


def test_longest_prefix_componentwise():
    pm = PathMap(RULES)
    assert pm.to_remote("/mnt/lab/Subjects/SW001/2024-01-02/001") == "/cluster/lab/Subjects/SW001/2024-01-02/001"
    assert pm.to_remote("/mnt/lab/Subjects") == "/cluster/lab/Subjects"
    assert pm.to_remote("/mnt/lab/Subjects/special/x") == "/fast/special/x"
    # Subjects2 is not under Subjects: it falls to the shorter /mnt/lab rule
    assert pm.to_remote("/mnt/lab/Subjects2/a") == "/cluster/labroot/Subjects2/a"
    assert pm.to_remote("/mnt/lab/Subjects/") == "/cluster/lab/Subjects"
    assert pm.to_local("/cluster/lab/Subjects/SW001/2024-01-02/001") == "/mnt/lab/Subjects/SW001/2024-01-02/001"
    assert pm.to_local("/fast/special/x") == "/mnt/lab/Subjects/special/x"


def test_no_rule_is_bad_input_naming_path_and_prefixes():
    pm = PathMap({"/mnt/lab/Subjects": "/cluster/lab/Subjects"}, name="hpc1")
    for p in ("/mnt/lab/Subjects2/SW001/2024-01-02/001", "/mnt/lab", "/home/me/data",
              "/mnt/lab/Subjects/../secret"):
        with pytest.raises(BadInput) as ei:
            pm.to_remote(p)
        msg = str(ei.value)
        assert "/mnt/lab/Subjects -> /cluster/lab/Subjects" in msg and "hpc1" in msg
    with pytest.raises(BadInput, match="no path_map is configured"):
        PathMap({}).to_remote("/mnt/lab/Subjects/x")
    with pytest.raises(BadInput, match="no mapping back"):
        pm.to_local("/elsewhere/x")
    assert not pm.covers("/mnt/lab/Subjects2") and pm.covers("/mnt/lab/Subjects/a")


def test_identity_rule_and_odd_paths(tmp_path, monkeypatch):
    pm = PathMap({"/": "/"})
    assert pm.to_remote("/a/b c/$(x)") == "/a/b c/$(x)"  # metacharacters are just characters
    monkeypatch.chdir(tmp_path)
    assert pm.to_remote("rel/x") == f"{tmp_path}/rel/x"  # workstation paths may be relative
    with pytest.raises(BadInput, match="absolute"):
        pm.to_local("rel/x")
    with pytest.raises(BadInput):
        PathMap({"relative": "/x"})
    with pytest.raises(BadInput, match="NUL"):
        pm.to_remote("/a\0b")


def test_parse_spec():
    assert parse_spec("alice@login.example.org:2222") == ("alice", "login.example.org", 2222)
    assert parse_spec("login") == (None, "login", None)
    assert parse_spec("ssh://bob@10.0.0.1") == ("bob", "10.0.0.1", None)
    assert parse_spec("[::1]:2200") == (None, "::1", 2200)
    for bad in ("alice@", "-oProxyCommand=x", "host:port", "a b", "host:70000", "bad user@h"):
        with pytest.raises(BadInput):
            parse_spec(bad)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    f = tmp_path / "config.toml"
    f.write_text('''
[ssh]
known_hosts = "/etc/hpcpipe/known_hosts"

[clusters.hpc1]
host = "login.hpc1.example.org"
user = "alice"
port = 2200
key = "~/.ssh/id_hpc1"
run_dir = "/scratch/alice/runs"
path_map = {"/mnt/lab/Subjects" = "/cluster/lab/Subjects"}

[clusters.broken]
host = "x"
hots = "typo"
''')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(f))
    for k in ("HPCPIPE_SSH_KNOWN_HOSTS", "HPCPIPE_SSH_CONNECT_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    return f


def test_resolve_named_cluster(cfg):
    t = resolve_remote("hpc1")
    assert (t.name, t.host, t.user, t.port, t.key, t.run_dir) == (
        "hpc1", "login.hpc1.example.org", "alice", 2200, "~/.ssh/id_hpc1", "/scratch/alice/runs")
    assert t.known_hosts == "/etc/hpcpipe/known_hosts"
    assert t.path_map.to_remote("/mnt/lab/Subjects/S1/2024-01-01/001") == "/cluster/lab/Subjects/S1/2024-01-01/001"
    tr = t.transport()
    assert (tr.host, tr.port, tr.user) == ("login.hpc1.example.org", 2200, "alice")
    assert tr.connect_count == 0  # nothing was sent: connection is lazy


def test_resolve_user_host_inherits_matching_cluster(cfg):
    t = resolve_remote("bob@login.hpc1.example.org")
    assert (t.name, t.user, t.port) == ("hpc1", "bob", 2200)
    assert t.path_map  # the cluster's rules apply
    t = resolve_remote("carol@other.example.org:2022")
    assert (t.name, t.host, t.user, t.port) == ("carol@other.example.org:2022", "other.example.org", "carol", 2022)
    with pytest.raises(BadInput, match="no path_map"):
        t.path_map.to_remote("/mnt/lab/Subjects/S1/2024-01-01/001")


def test_resolve_errors(cfg):
    with pytest.raises(BadInput, match="hots"):
        resolve_remote("broken")
    with pytest.raises(BadInput):
        resolve_remote("")


def test_unmapped_path_refused_before_connecting(cfg):
    """The order a remote submit follows: map every session path, then connect."""
    target = resolve_remote("hpc1")
    transport = target.transport()
    with pytest.raises(BadInput, match="/mnt/other/S1/2024-01-01/001 has no mapping"):
        target.path_map.to_remote("/mnt/other/S1/2024-01-01/001")
    assert transport.connect_count == 0 and not transport.connected


@pytest.mark.ssh
def test_remote_run_dir(make_transport, sshd):
    t = make_transport()
    home = t.run(["sh", "-c", 'printf %s "$HOME"']).stdout
    assert RemoteTarget("x", "h").remote_run_dir(t) == f"{home}/.local/share/hpcpipe/runs"
    assert RemoteTarget("x", "h", run_dir="~/runs").remote_run_dir(t) == f"{home}/runs"
    assert RemoteTarget("x", "h", run_dir="/abs/runs/").remote_run_dir(t) == "/abs/runs"
