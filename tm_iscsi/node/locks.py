"""Advisory locks on the node: one per VG, one per target, so that two front-end actions (oned
runs up to 15 at once) never interleave changes to the same object."""
import contextlib
import fcntl
import os
import re
import time

from .errors import NodeError

LOCK_DIR = os.environ.get("TM_ISCSI_LOCK_DIR", "/run/lock/tm_iscsi")
DEFAULT_TIMEOUT = 120


@contextlib.contextmanager
def lock(kind, name, timeout=DEFAULT_TIMEOUT):
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{kind}-{name}")
    os.makedirs(LOCK_DIR, exist_ok=True)
    path = os.path.join(LOCK_DIR, safe + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"timed out after {timeout}s waiting for lock {path}; "
                                    "another tm_iscsi action holds it")
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
