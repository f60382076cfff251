"""Advisory locks on the node, so that concurrent front-end actions (oned runs up to 15 at once)
never interleave changes to the same object.

Locks and the order a transaction takes them in (never the other way round):
    vg-<vg>  ->  lv-<vg/lv>  ->  lio-config       (storage node)
    stack-<name>  ->  localvg-<vg> / readcache-<id>  ->  iscsi-<iqn>  ->  iscsiadm-db   (host)
`lio-config` covers every change to LIO and the saved config (LIO's configfs is one tree: a walk
over it during another action's change fails); `iscsiadm-db` covers iscsiadm's node database,
which is one set of files for every target.

A lock held by this process is taken again at no cost (a transaction calls helpers that lock
on their own). A wait is bounded by the call's deadline (deadline.remaining()): when the lock cannot
be had in time the error names the lock and the process that holds it."""
import contextlib
import fcntl
import os
import re
import time

from . import deadline
from .errors import NodeError

LOCK_DIR = os.environ.get("TM_ISCSI_LOCK_DIR", "/run/lock/tm_iscsi")
DEFAULT_TIMEOUT = 120
_HELD = {}


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


@contextlib.contextmanager
def lock(kind, name, timeout=None):
    """Hold lock `kind name`. Without an explicit `timeout` the wait is the call's remaining
    budget (DEFAULT_TIMEOUT for a call without one): a transaction given 600 s must not give up
    after a shorter limit of its own."""
    path = _path(kind, name)
    if path in _HELD:
        yield
        return
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if timeout is None:
            left = deadline.remaining()
            timeout = DEFAULT_TIMEOUT if left is None else left
        wait = deadline.bounded(timeout)
        until = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > until:
                    why = ("the call's deadline" if wait < timeout else f"{timeout}s")
                    raise NodeError(f"gave up waiting for lock {kind} {name} after {wait:.0f}s "
                                    f"({why}); it is held by {_holder(fd)}")
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        except OSError:
            pass
        _HELD[path] = fd
        try:
            yield
        finally:
            del _HELD[path]
    finally:
        os.close(fd)
