"""The catch-all of every program, and the node's deadline: an unforeseen exception is one line
with the traceback in syslog; a lock that cannot be had within the call's budget names itself and
its holder; no program starts after the budget is spent."""
import fcntl
import os

import pytest

from tm_iscsi import entry
from tm_iscsi.node import deadline, locks
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError


@pytest.fixture(autouse=True)
def no_deadline(monkeypatch, tmp_path):
    monkeypatch.setattr(deadline, "_until", None)
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))


def test_an_unforeseen_exception_is_one_line_and_exit_70(capsys, mocker):
    logged = mocker.patch.object(entry, "_to_syslog")

    def broken():
        raise KeyError("surprise\nsecond line")
    assert entry.guarded("tm clone", broken) == entry.EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tm clone: internal error (KeyError")
    assert "Traceback" in logged.call_args[0][1]


def test_a_lock_held_past_the_budget_names_itself_and_its_holder():
    os.makedirs(locks.LOCK_DIR, exist_ok=True)
    fd = os.open(locks._path("vg", "vg-one-100"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"pid 4242 since 12:00:00\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        deadline.start(deadline.MARGIN + 1.2)
        with pytest.raises(NodeError, match=r"lock vg vg-one-100 .*deadline.*pid 4242"):
            with locks.lock("vg", "vg-one-100"):
                pass
    finally:
        os.close(fd)


def test_no_program_starts_once_the_budget_is_spent(monkeypatch):
    monkeypatch.setattr(deadline, "_until", 0.0)
    with pytest.raises(NodeError, match="time budget"):
        _run.run(["true"])


def test_a_lock_this_process_holds_is_taken_again_at_no_cost():
    with locks.lock("lio", "config"):
        with locks.lock("lio", "config"):
            pass


def test_a_lock_one_thread_holds_excludes_the_process_s_other_threads():
    import threading
    import time
    taken, events = threading.Event(), []

    def first():
        with locks.lock("iscsiadm", "db"):
            taken.set()
            time.sleep(0.3)
            events.append("first out")

    def second():
        with locks.lock("iscsiadm", "db"):
            events.append("second in")
    one = threading.Thread(target=first)
    one.start()
    assert taken.wait(10)
    two = threading.Thread(target=second)
    two.start()
    one.join()
    two.join()
    assert events == ["first out", "second in"]


@pytest.mark.parametrize("lines, unreachable", [
    (["ssh: connect to host host1 port 22: Connection timed out"], True),
    (["ssh: Could not resolve hostname host9: Name or service not known"], True),
    (["Connection closed by 10.0.0.11 port 22"], True),
    (["Control socket connect(/tmp/x): Connection refused"], True),
    ([], False),                                    # the helper was killed by a signal
    (["tm-iscsi-node: error: argument command: invalid choice"], False),
])
def test_only_ssh_s_own_failures_make_a_host_unreachable(lines, unreachable):
    from tm_iscsi import remote
    assert remote._unreachable(lines) is unreachable


def test_every_node_call_carries_its_budget_before_the_command():
    from tm_iscsi import remote, settings as settings_mod
    settings = settings_mod.load({"TM_ISCSI_CONF": "/none", "TM_ISCSI_FRONTEND": "fe"})
    argv = remote.Node("storage", settings)._argv("storage-attach", ["--request", "{}"],
                                                  budget=600)
    remote_words = argv[-1].split()
    assert remote_words[:5] == ["sudo", "-n", "tm-iscsi-node", "--budget", "600"]
    assert remote_words[5] == "storage-attach"


def test_a_lock_waits_as_long_as_the_budget_not_a_shorter_default(monkeypatch):
    deadline.start(deadline.MARGIN + 1000)
    waits = []
    real = locks.deadline.bounded
    monkeypatch.setattr(locks.deadline, "bounded", lambda s: waits.append(s) or real(s))
    with locks.lock("vg", "x"):
        pass
    assert waits and waits[0] > locks.DEFAULT_TIMEOUT


def _hold_raw(kind, name):
    """Another process's hold of a lock: a flock on a description of its own."""
    os.makedirs(locks.LOCK_DIR, exist_ok=True)
    fd = os.open(locks._path(kind, name), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_waiters_get_a_lock_in_the_order_they_came(tmp_path):
    """15 actions queued on one VG: with flock alone a waiter could be passed over by later ones
    again and again; each now waits its turn."""
    import multiprocessing
    import time
    order = tmp_path / "order"
    held = _hold_raw("vg", "vg-one-100")

    def waiter(index):
        os.close(held)   # the parent's hold, inherited: only the parent's close releases it
        with locks.lock("vg", "vg-one-100", timeout=60):
            with open(order, "a") as f:
                f.write(f"{index}\n")
            time.sleep(0.02)
    ctx = multiprocessing.get_context("fork")
    procs = []
    for index in range(6):
        proc = ctx.Process(target=waiter, args=(index,))
        proc.start()
        procs.append(proc)
        # In the queue before the next one comes.
        queue = locks._queue(locks._path("vg", "vg-one-100"))
        until = time.monotonic() + 10
        while not os.path.isdir(queue) or \
                len([n for n in os.listdir(queue) if not n.startswith(".")]) < index + 1:
            assert time.monotonic() < until
            time.sleep(0.01)
    os.close(held)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert order.read_text().split() == [str(i) for i in range(6)]
    assert os.listdir(queue) == []


def test_a_killed_waiter_s_ticket_does_not_block_the_queue():
    queue = locks._queue(locks._path("vg", "x"))
    os.makedirs(queue)
    dead = os.path.join(queue, f"{1:020d}-4242")   # older than any new one, held by nobody
    open(dead, "w").close()
    with locks.lock("vg", "x", timeout=5):
        assert not os.path.exists(dead)
    assert os.listdir(queue) == []


def test_a_wait_that_ends_behind_others_says_so(tmp_path):
    import multiprocessing
    held = _hold_raw("vg", "y")
    queue = locks._queue(locks._path("vg", "y"))
    ready = multiprocessing.get_context("fork").Event()

    def ahead():
        os.close(held)
        # A live waiter that came first (its ticket flocked), never served in this test.
        ticket, fd = locks._take_ticket(queue)
        ready.set()
        import time
        time.sleep(30)
    proc = multiprocessing.get_context("fork").Process(target=ahead)
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(NodeError, match=r"lock vg y after 1s .*1 more action\(s\) queued"):
            with locks.lock("vg", "y", timeout=1):
                pass
        # The one that gave up left no ticket; the live one's stays.
        assert len(os.listdir(queue)) == 1
    finally:
        proc.kill()
        proc.join()
        os.close(held)
