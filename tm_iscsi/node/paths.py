"""Which paths the node helper may touch on a host. It runs as root for oneadmin, so a path from
the front-end is accepted only inside the system datastores' directory: nothing else on the
host can be written, linked or removed through it.

The directory is oned's DATASTORE_LOCATION, which install.sh writes into node.conf as
DATASTORES (sudo drops the environment, so the file is what counts); what the helper creates in
it belongs to node.conf's ONEADMIN, as the VM directories of any OpenNebula host do: the KVM
driver writes its deployment file there as oneadmin."""
import os
import pwd

from . import nodeconf
from .errors import NodeError

DEFAULT_DATASTORES_DIR = "/var/lib/one/datastores"
DEFAULT_ONEADMIN = "oneadmin"


def datastores_dir():
    return os.path.normpath(os.environ.get("TM_ISCSI_DATASTORES_DIR") or
                            nodeconf.get("DATASTORES", DEFAULT_DATASTORES_DIR))


def checked(path, must_be_inside=None):
    root = os.path.normpath(must_be_inside or datastores_dir())
    if not path or not os.path.isabs(path) or "\0" in path:
        raise NodeError(f"path {path!r} must be absolute")
    normal = os.path.normpath(path)
    if normal == root or not normal.startswith(root + os.sep):
        raise NodeError(f"refusing {path}: tm_iscsi only works under {root} (DATASTORES in "
                        f"{nodeconf.PATH})")
    # A symlinked parent could lead outside the datastores: resolve the parent, not the leaf
    # (the leaf itself is often our own disk.N symlink).
    parent = os.path.realpath(os.path.dirname(normal))
    real_root = os.path.realpath(root)
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise NodeError(f"refusing {path}: its directory resolves outside {root}")
    return normal


def oneadmin_ids():
    """(uid, gid) of node.conf's ONEADMIN, or None when this node has no such user."""
    try:
        entry = pwd.getpwnam(nodeconf.get("ONEADMIN", DEFAULT_ONEADMIN))
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def owner_of_tree(path):
    """uid/gid new files get: oneadmin's, so that oned's drivers (which run as oneadmin) can
    write beside them and qemu can use them; on a node without that user, those of the nearest
    existing ancestor."""
    ids = oneadmin_ids()
    if ids is not None:
        return ids
    probe = os.path.dirname(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.stat(probe or "/")
    return st.st_uid, st.st_gid


def makedirs_owned(path):
    uid, gid = owner_of_tree(os.path.join(path, "x"))
    missing = []
    probe = path
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue  # made meanwhile by a concurrent action
        os.chown(directory, uid, gid)
