"""The VM directory on a host: what travels with a VM besides its disks (the context ISO, a
checkpoint), and its removal."""
import os
import shutil
import sys
import tempfile

from . import paths, vmdir
from .cmd_cache import NAME, flush_stacks
from .cli import checked_command as command
from .errors import NodeError
from .locks import lock


def _path_option(parser):
    parser.add_argument("--path", required=True)


@command("dir-pack", "write the VM directory (without disk links) as a tar stream on stdout")
def dir_pack(args):
    path = paths.checked(args.path)
    if args.flush:
        # A live migration's source: its write-back stacks flushed and kept clean before the
        # directory leaves, in the same call.
        from dmcache import stack
        flush_stacks(args.flush, stack.FLUSH_TIMEOUT)
    sys.stdout.flush()
    vmdir.pack(path, sys.stdout.buffer)
    return None


def _pack_options(parser):
    _path_option(parser)
    parser.add_argument("--flush", action="append", type=NAME, default=[], metavar="STACK",
                        help="flush this write-back stack first and keep it clean (repeatable)")


dir_pack.configure = _pack_options


@command("dir-unpack", "create the VM directory and unpack a tar stream from stdin into it")
def dir_unpack(args):
    return {"path": vmdir.unpack(args.path, sys.stdin.buffer)}


dir_unpack.configure = _path_option


@command("file-put", "write stdin to a file in a VM directory (atomically)")
def file_put(args):
    path = paths.checked(args.path)
    with lock("vmdir", os.path.dirname(path)):
        paths.makedirs_owned(os.path.dirname(path))
        uid, gid = paths.owner_of_tree(path)
        with paths.as_oneadmin():
            return _put(path, uid, gid)


def _put(path, uid, gid):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tm_iscsi-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, 0o644)
        if os.path.islink(path) or os.path.isdir(path):
            raise NodeError(f"{path} exists and is not a regular file")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": path, "bytes": os.path.getsize(path)}


file_put.configure = _path_option


@command("path-remove", "remove a file, a link or a whole VM directory (links only, never their devices)")
def path_remove(args):
    return remove_path(args.path)


def remove_path(path):
    path = paths.checked(path, leaf_may_be_link=True)
    with lock("vmdir", path if os.path.isdir(path) else os.path.dirname(path)), \
            paths.as_oneadmin():
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
            return {"path": path, "removed": True}
        if not os.path.isdir(path):
            return {"path": path, "removed": False}
        shutil.rmtree(path)
    return {"path": path, "removed": True}


path_remove.configure = _path_option
