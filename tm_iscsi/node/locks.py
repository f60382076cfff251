"""Advisory locks on the node, so that concurrent front-end actions (oned runs up to 15 at once)
never interleave changes to the same object.

Locks and the order a transaction takes them in (never the other way round):
    vg-<vg>  ->  lv-<vg/lv>  ->  lio-config       (storage node)
    stack-<name>  ->  localvg-<vg> / readcache-<id>  ->  iscsi-<iqn>  ->  iscsiadm-db   (host)
`lio-config` covers every change to LIO and the saved config (LIO's configfs is one tree: a walk
over it during another action's change fails); `iscsiadm-db` covers iscsiadm's node database,
which is one set of files for every target.

A lock held by this thread is taken again at no cost (a transaction calls helpers that lock
on their own). A wait is bounded by the call's deadline (deadline.remaining()): when the lock cannot
be had in time the error names the lock and the process that holds it.

Waiters are served first come, first served: flock alone gives no order, and with 15 actions
queued on a VG some waited several turns while later ones went first (a burst's p95 was 4x its
median). Each waiter puts a ticket in the lock's queue folder, a file it holds an flock on while
it waits, so a waiter killed -9 leaves a ticket nobody holds, which the next waiter removes."""
import contextlib
import fcntl
import os
import re
import threading
import time

from . import deadline
from .errors import NodeError

LOCK_DIR = os.environ.get("TM_ISCSI_LOCK_DIR", "/run/lock/tm_iscsi")
DEFAULT_TIMEOUT = 120
# Per thread: a host-attach logs in to its LUNs from several threads, and a lock one of them
# holds must still exclude the others (flock does, across the descriptors each one opens).
_local = threading.local()


def _held():
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def _path(kind, name):
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{kind}-{name}")
    return os.path.join(LOCK_DIR, safe + ".lock")


def _holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        return "another tm_iscsi action"
    return text or "another tm_iscsi action"


def _queue(path):
    return path[:-len(".lock")] + ".queue"


def _take_ticket(queue):
    """A ticket named by its arrival (ns, then pid and thread), flocked before it shows in the
    queue: a ticket there that nobody holds is a dead waiter's, never one still being made."""
    os.makedirs(queue, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}"
    tmp = os.path.join(queue, f".new-{name}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, os.path.join(queue, name))
    return name, fd


def _ahead(queue, mine):
    """How many live waiters came before ticket `mine`; the dead ones' tickets are removed."""
    try:
        names = sorted(n for n in os.listdir(queue) if not n.startswith(".") and n < mine)
    except FileNotFoundError:
        return 0
    alive = 0
    for name in names:
        path = os.path.join(queue, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue   # served meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            alive += 1
        else:
            # Nobody holds it: its waiter was killed (or left) without removing it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
    return alive


@contextlib.contextmanager
def lock(kind, name, timeout=None):
    """Hold lock `kind name`. Without an explicit `timeout` the wait is the call's remaining
    budget (DEFAULT_TIMEOUT for a call without one): a transaction given 600 s must not give up
    after a shorter limit of its own."""
    path = _path(kind, name)
    held = _held()
    if path in held:
        yield
        return
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    queue = _queue(path)
    try:
        ticket, ticket_fd = _take_ticket(queue)
    except BaseException:
        os.close(fd)
        raise
    try:
        if timeout is None:
            left = deadline.remaining()
            timeout = DEFAULT_TIMEOUT if left is None else left
        wait = deadline.bounded(timeout)
        until = time.monotonic() + wait
        while True:
            ahead = _ahead(queue, ticket)
            if not ahead:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
            if time.monotonic() > until:
                why = ("the call's deadline" if wait < timeout else f"{timeout}s")
                queued = f", {ahead} more action(s) queued before this one" if ahead else ""
                raise NodeError(f"gave up waiting for lock {kind} {name} after {wait:.0f}s "
                                f"({why}); it is held by {_holder(fd)}{queued}")
            time.sleep(0.05)
    except BaseException:
        _leave(queue, ticket, ticket_fd)
        os.close(fd)
        raise
    # Served: the ticket goes, so the next in line waits for this holder's flock only.
    _leave(queue, ticket, ticket_fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        except OSError:
            pass
        held[path] = fd
        try:
            yield
        finally:
            del held[path]
    finally:
        os.close(fd)


def _leave(queue, ticket, ticket_fd):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(queue, ticket))
    os.close(ticket_fd)
