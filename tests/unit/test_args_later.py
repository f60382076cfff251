"""A node call begun before its arguments are known (remote.Node.begin, the node helper's
--args-on-stdin): the words arrive as stdin's first line and the rest of stdin is the command's;
a call given nothing changes nothing; attach starts the host's call before the storage node's
and abandons it when the storage node fails."""
import dataclasses
import io
import json
import sys

import pytest

from tm_iscsi import attachment, remote
from tm_iscsi import settings as settings_mod
from tm_iscsi.errors import DriverError
from tm_iscsi.node import cli, deadline

# -- the node's side ------------------------------------------------------------------------------


@pytest.fixture
def echo_command(monkeypatch):
    """A command that answers its option and what it reads of stdin after the words (and the
    deadline a --budget sets is this test's only)."""
    monkeypatch.setattr(deadline, "_until", None)
    def echo(args):
        return {"word": args.word, "rest": sys.stdin.buffer.read().decode()}
    echo.configure = lambda p: p.add_argument("--word", required=True)
    cli.command("test-echo", "echo")(echo)
    yield
    cli._COMMANDS.pop("test-echo")


def _main(capsys, argv, stdin):
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        code = cli.main(argv)
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_the_words_come_from_stdin_and_the_rest_is_the_commands(capsys, echo_command):
    code, out, _ = _main(capsys, ["--budget", "60", "--args-on-stdin", "test-echo"],
                         b'["--word", "w1"]\nsecret\nmore')
    assert code == 0 and out == {"word": "w1", "rest": "secret\nmore"}
    # The budget counts from the call's start, not from when the words came.
    assert 50 < deadline.remaining() <= 57


@pytest.mark.parametrize("stdin", [b"", b"\n", b"not json\n", b'{"word": 1}\n', b"[1, 2]\n"])
def test_no_words_or_not_a_list_of_words_is_a_usage_error(capsys, echo_command, stdin):
    code, out, err = _main(capsys, ["--args-on-stdin", "test-echo"], stdin)
    assert code == 2 and out is None
    assert len(err.strip().splitlines()) == 1 and "--args-on-stdin" in err


def test_words_from_stdin_are_checked_like_the_command_line(capsys, echo_command):
    code, out, err = _main(capsys, ["--args-on-stdin", "test-echo"],
                           b'["--word", "w", "--other", "x"]\n')
    assert code == 2 and out is None and "unrecognized arguments" in err


# -- the front-end's side -------------------------------------------------------------------------

def _node(script):
    settings = dataclasses.replace(settings_mod.load({"TM_ISCSI_CONF": "/none"}),
                                   ssh_argv=("sh", "-c", script, "sh"))
    return remote.Node("host1", settings)


# The stand-in for ssh: $3 is the remote command line; it answers with the first line of stdin
# and the rest.
_ECHO = ('read -r words; rest=$(cat); '
         'printf \'{"remote": "%s", "words": %s, "rest": "%s"}\' "$3" "$words" "$rest"')


def test_begin_then_finish_sends_the_words_then_stdin():
    started = _node(_ECHO).begin("host-attach", timeout=30)
    got = started.finish("--request", '{"a": 1}', stdin="chap-secret")
    assert got["words"] == ["--request", '{"a": 1}'] and got["rest"] == "chap-secret"
    assert "--args-on-stdin host-attach" in got["remote"] and "--budget 30" in got["remote"]


def test_a_failure_of_a_begun_call_is_its_one_line():
    started = _node('read -r words; echo "no such LUN" >&2; exit 1').begin("host-attach",
                                                                          timeout=30)
    with pytest.raises(DriverError, match="host1: no such LUN"):
        started.finish("--request", "{}")


def test_abandon_gives_the_node_no_words(tmp_path):
    seen = tmp_path / "seen"
    started = _node(f'cat > "{seen}"').begin("host-attach", timeout=30)
    started.abandon()
    assert seen.read_bytes() == b""


def test_abandon_after_finish_does_nothing():
    started = _node(_ECHO).begin("host-attach", timeout=30)
    assert started.finish("--x")["words"] == ["--x"]
    started.abandon()


def test_faults_count_a_begun_call_at_its_start(monkeypatch):
    """after:N of the call begun first fires when it finishes, not at a later call's number."""
    monkeypatch.setattr(remote, "_FAULTS", remote._FaultPlan("after:1"))
    node = _node(_ECHO)
    started = node.begin("host-attach", timeout=30)      # call 1
    node.call("storage-attach", stdin="[]\n")            # call 2: no fault
    with pytest.raises(DriverError, match="injected fault after call 1"):
        started.finish()


# -- attach ---------------------------------------------------------------------------------------

class _Events:
    def __init__(self):
        self.log = []


class _Started:
    """remote.Started's contract: abandon() after finish() does nothing."""

    def __init__(self, events, host, command):
        self.events, self.host, self.command, self.ended = events, host, command, False

    def finish(self, *args, stdin=None):
        self.ended = True
        self.events.log.append(("finish", self.host, self.command))
        return {"initiator_mismatch": False, "disks": []}

    def abandon(self):
        if not self.ended:
            self.ended = True
            self.events.log.append(("abandon", self.host, self.command))


class _Node:
    def __init__(self, events, host, fail_storage):
        self.events, self.host, self.fail_storage = events, host, fail_storage

    def begin(self, command, *args, timeout=None):
        self.events.log.append(("begin", self.host, command))
        return _Started(self.events, self.host, command)

    def call(self, command, *args, **kwargs):
        self.events.log.append(("call", self.host, command))
        if command == "host-detach":
            if self.fail_storage:
                raise DriverError(f"{self.host}: device busy")
            return {"initiator": "iqn.2026-11.lab.tm-iscsi:host1", "disks": []}
        if self.fail_storage:
            raise DriverError(f"{self.host}: pool full")
        return {"disks": [{"lv": "vm-1-disk-0", "mode": "none", "luns": {
            "clone": {"iqn": "iqn.2026-11.lab.tm-iscsi:vg.vm-1-disk-0", "serial": "S1"}}}]}


def _ctx(events, fail_storage=False):
    class Ds:
        ds_id, vg, pool, iqn_base, chap_user, max_fill = 100, "vg", "pool", "iqn.x", None, 90
        storage_host, portal, writeback_mib = "storage", "10.0.0.1", 64

        def chap_stdin(self):
            return None

    class Volume:
        ds, lv, readonly, kind = Ds(), "vm-1-disk-0", False, "clone"
        iqn, serial = "iqn.2026-11.lab.tm-iscsi:vg.vm-1-disk-0", "S1"

    class Ctx:
        settings = settings_mod.load({"TM_ISCSI_CONF": "/none"})

        def initiator(self, host):
            return "iqn.2026-11.lab.tm-iscsi:host1"

        def node(self, host):
            return _Node(events, host, fail_storage)

        def is_frontend(self, host):
            return False

    return Ctx(), Volume()


def test_attach_begins_the_hosts_call_before_the_storage_nodes():
    events = _Events()
    ctx, volume = _ctx(events)
    attachment.attach(ctx, "host1", [attachment.Attach(volume, "/x/disk.0")])
    assert events.log == [("begin", "host1", "host-attach"),
                          ("call", "storage", "storage-attach"),
                          ("finish", "host1", "host-attach")]


def test_a_storage_failure_abandons_the_hosts_call():
    events = _Events()
    ctx, volume = _ctx(events, fail_storage=True)
    with pytest.raises(DriverError, match="pool full"):
        attachment.attach(ctx, "host1", [attachment.Attach(volume, "/x/disk.0")])
    assert events.log == [("begin", "host1", "host-attach"),
                          ("call", "storage", "storage-attach"),
                          ("abandon", "host1", "host-attach")]


def test_a_detach_without_flush_begins_the_storage_nodes_call_with_the_hosts():
    events = _Events()
    ctx, volume = _ctx(events)
    attachment.detach(ctx, "host1", [attachment.Release(volume, "/x/disk.0", flush=False,
                                                        remove=True)])
    assert events.log == [("begin", "storage", "storage-release"),
                          ("call", "host1", "host-detach"),
                          ("finish", "storage", "storage-release")]


def test_a_detach_that_flushes_calls_the_storage_node_after_the_host():
    events = _Events()
    ctx, volume = _ctx(events)
    attachment.detach(ctx, "host1", [attachment.Release(volume, "/x/disk.0", flush=True)])
    assert events.log == [("call", "host1", "host-detach"),
                          ("call", "storage", "storage-release")]


def test_a_host_detach_failure_abandons_the_storage_nodes_call():
    events = _Events()
    ctx, volume = _ctx(events, fail_storage=True)
    with pytest.raises(DriverError, match="device busy"):
        attachment.detach(ctx, "host1", [attachment.Release(volume, "/x/disk.0", flush=False)])
    assert events.log == [("begin", "storage", "storage-release"),
                          ("call", "host1", "host-detach"),
                          ("abandon", "storage", "storage-release")]


# -- connections sshd turns away -------------------------------------------------------------------

def _flaky(tmp_path, fails, then):
    """An ssh stand-in that is turned away `fails` times (as sshd's MaxStartups does), then runs
    `then`."""
    count = tmp_path / "count"
    count.write_text("0")
    return (f'n=$(cat "{count}"); echo $((n + 1)) > "{count}"; '
            f'if [ "$n" -lt {fails} ]; then '
            f'echo "kex_exchange_identification: read: Connection reset by peer" >&2; exit 255; '
            f'fi; {then}'), count


def test_a_connection_turned_away_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    script, count = _flaky(tmp_path, 2, 'cat >/dev/null; echo "{\\"ok\\": true}"')
    assert _node(script).call("storage-attach", stdin="x") == {"ok": True}
    assert count.read_text().strip() == "3"


def test_a_host_that_keeps_turning_away_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    script, count = _flaky(tmp_path, 99, "echo '{}'")
    with pytest.raises(remote.NodeUnreachable, match="kex_exchange_identification"):
        _node(script).call("storage-attach")
    assert count.read_text().strip() == str(remote.CONNECT_ATTEMPTS)


def test_a_stream_is_not_sent_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    script, count = _flaky(tmp_path, 1, "echo '{}'")
    source = tmp_path / "image"
    source.write_bytes(b"data")
    with open(source, "rb") as stream, pytest.raises(remote.NodeUnreachable):
        _node(script).call("lv-write", stdin=stream)
    assert count.read_text().strip() == "1"


def test_a_begun_call_turned_away_is_made_whole(tmp_path, monkeypatch):
    """The words it never got go on the command line of the call made again."""
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    script, count = _flaky(tmp_path, 1, 'rest=$(cat); printf \'{"remote": "%s", "rest": "%s"}\' '
                                        '"$3" "$rest"')
    started = _node(script).begin("host-attach", timeout=30)
    got = started.finish("--request", "R1", stdin="secret")
    assert "--args-on-stdin" not in got["remote"] and "host-attach --request R1" in got["remote"]
    assert got["rest"] == "secret" and count.read_text().strip() == "2"
