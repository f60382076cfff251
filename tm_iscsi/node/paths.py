"""Which paths the node helper may touch on a host. It runs as root for oneadmin, so a path from
the front-end is accepted only inside the system datastores' directory: nothing else on the
host can be written, linked or removed through it."""
import os

from .errors import NodeError

DATASTORES_DIR = os.environ.get("TM_ISCSI_DATASTORES_DIR", "/var/lib/one/datastores")


def checked(path, must_be_inside=DATASTORES_DIR):
    if not path or not os.path.isabs(path) or "\0" in path:
        raise NodeError(f"path {path!r} must be absolute")
    normal = os.path.normpath(path)
    root = os.path.normpath(must_be_inside)
    if normal == root or not normal.startswith(root + os.sep):
        raise NodeError(f"refusing {path}: tm_iscsi only works under {root}")
    # A symlinked parent could lead outside the datastores: resolve the parent, not the leaf
    # (the leaf itself is often our own disk.N symlink).
    parent = os.path.realpath(os.path.dirname(normal))
    real_root = os.path.realpath(root)
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise NodeError(f"refusing {path}: its directory resolves outside {root}")
    return normal


def owner_of_tree(path):
    """uid/gid new files get: those of the nearest existing ancestor below the datastores dir
    (oneadmin on a real host), so qemu and libvirt can use them."""
    probe = os.path.dirname(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.stat(probe or "/")
    return st.st_uid, st.st_gid


def makedirs_owned(path):
    uid, gid = owner_of_tree(path)
    missing = []
    probe = path
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
        os.chown(directory, uid, gid)
