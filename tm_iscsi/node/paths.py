"""Which paths the node helper may touch on a host. It runs as root for oneadmin, so a path from
the front-end is accepted only inside the system datastores' directory: nothing else on the
host can be written, linked or removed through it.

The directory is oned's DATASTORE_LOCATION, which install.sh writes into node.conf as
DATASTORES (sudo drops the environment, so the file is what counts); what the helper creates in
it belongs to node.conf's ONEADMIN, as the VM directories of any OpenNebula host do: the KVM
driver writes its deployment file there as oneadmin."""
import contextlib
import os
import pwd
import stat

from . import nodeconf
from .errors import NodeError

DEFAULT_DATASTORES_DIR = "/var/lib/one/datastores"
DEFAULT_ONEADMIN = "oneadmin"


def datastores_dir():
    return os.path.normpath(os.environ.get("TM_ISCSI_DATASTORES_DIR") or
                            nodeconf.get("DATASTORES", DEFAULT_DATASTORES_DIR))


# Longer paths are no VM directory of oned's (<datastores>/<ds id>/<vm id>/disk.N).
MAX_PATH = 1024


def checked(path, must_be_inside=None, leaf_may_be_link=False):
    """`path`, normalised, when it lies inside the datastores directory and no component below
    that directory is a symlink (refused, never followed: oneadmin owns these directories and
    could point one anywhere). Only a disk link itself (`leaf_may_be_link`) may be a symlink."""
    root = os.path.normpath(must_be_inside or datastores_dir())
    if not path or not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise NodeError(f"path {path!r} must be absolute")
    if len(path) > MAX_PATH or "\n" in path:
        raise NodeError(f"path {path[:80]!r}... is not a VM directory path (too long or "
                        "multi-line)")
    if ".." in path.split("/"):
        raise NodeError(f"refusing {path}: '..' is not allowed in a path")
    normal = os.path.normpath(path)
    if normal == root or not normal.startswith(root + os.sep):
        raise NodeError(f"refusing {path}: tm_iscsi only works under {root} (DATASTORES in "
                        f"{nodeconf.PATH})")
    parts = normal[len(root) + 1:].split(os.sep)
    probe = root
    for index, part in enumerate(parts):
        probe = os.path.join(probe, part)
        try:
            st = os.lstat(probe)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode) and not (leaf_may_be_link and index == len(parts) - 1):
            raise NodeError(f"refusing {path}: {probe} is a symlink (to "
                            f"{os.readlink(probe)}); tm_iscsi does not follow links here")
        if index < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise NodeError(f"refusing {path}: {probe} is not a directory")
    return normal


@contextlib.contextmanager
def as_oneadmin():
    """File work in the VM directories done with oneadmin's rights, not root's: whatever links
    oneadmin may have planted there, the helper can then reach no more than oneadmin itself.
    A no-op without that user, or when not root."""
    ids = _ids_to_drop_to()
    if ids is None:
        yield
        return
    uid, gid = ids
    groups = os.getgroups()
    os.setgroups([gid])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def oneadmin_subprocess():
    """subprocess.run keyword arguments that run a child as oneadmin (real and effective), or
    {} without that user."""
    ids = _ids_to_drop_to()
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def _ids_to_drop_to():
    """oneadmin's ids when running as root and the user exists; else None (nothing to drop)."""
    return oneadmin_ids() if os.geteuid() == 0 else None


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
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue  # made meanwhile by a concurrent action
        # lchown: never the target of a link planted meanwhile.
        os.lchown(directory, uid, gid)
