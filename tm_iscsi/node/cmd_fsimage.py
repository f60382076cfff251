"""A directory read out of an image, or written into one, offline on the storage node.

image-extract reads from a thin snapshot of the image (`<lv>-extract`, made for the call and
removed after it): the image itself is never mounted, so a journal replay or an atime lands in
the snapshot. image-overlay writes into an image no VM uses: the front-end makes it for this
(a clone of the original in oned), and the helper refuses an LV that is exported, open, or the
origin of any snapshot or clone."""
import argparse
import sys

from .. import naming
from . import confine, fsimage, locks, lvm, lvops
from . import run as _run
from .cli import checked_command as command
from .errors import NodeError
from .naming_args import LV

EXTRACT_SUFFIX = "-extract"
MAX_PARTITION = 128


def _inner_path(value):
    try:
        return fsimage.check_inner_path(value)
    except NodeError as err:
        raise argparse.ArgumentTypeError(str(err))


def _partition(value):
    if not (value.isascii() and value.isdigit() and len(value) <= 3 and
            int(value) <= MAX_PARTITION):
        raise argparse.ArgumentTypeError(f"{value[:20]!r}: a partition number from 1 to "
                                         f"{MAX_PARTITION}, or 0 for the whole disk")
    return int(value)


def _image_lv(rep, name, verb):
    if not naming.is_source_lv(name):
        raise NodeError(f"{rep.name}/{name} is not an image's LV (img-<id>)")
    return lvops.require_lv(rep, name, verb)


def _options(p, path_flag):
    p.add_argument("--vg", required=True, type=confine.storage_vg)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument(path_flag, required=True, type=_inner_path, dest="inner",
                   help="absolute path inside the image's filesystem")
    p.add_argument("--partition", type=_partition, default=0,
                   help="the partition holding the filesystem (0: the whole disk)")


@command("image-extract", "a directory of an image's filesystem as tar.gz on stdout (no JSON)")
def image_extract(args):
    snapshot = args.lv + EXTRACT_SUFFIX
    with locks.lock("extract", f"{args.vg}/{args.lv}"):
        with locks.lock("lv", f"{args.vg}/{args.lv}"):
            rep = lvm.report(args.vg)
            origin = _image_lv(rep, args.lv, "read")
            if rep.get(snapshot) is not None:     # an extract that died half-way
                fsimage.release_stale(lvm.lv_path(args.vg, snapshot))
                lvops.remove(rep, snapshot)
            _run.info(f"thin snapshot {args.vg}/{snapshot} of {origin.name} to read from")
            lvm.create_snapshot(args.vg, origin.name, snapshot,
                                lvops.stamped(naming.lv_tags(kind="extract")), active=True)
        try:
            path = lvm.lv_path(args.vg, snapshot)
            where = f"{args.vg}/{args.lv}" + (f" partition {args.partition}"
                                              if args.partition else "")
            # Writable: a dirty journal is replayed into the snapshot, so what is read is what
            # the guest would see after its own mount.
            with fsimage.block_device(path, args.partition, read_only=False) as device:
                fs = fsimage.filesystem_of(device, where)
                with fsimage.mounted(device, fs, read_only=True) as point:
                    sys.stdout.flush()
                    fsimage.tar_out(point, args.inner, sys.stdout.buffer)
                    sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise NodeError(f"image-extract {args.vg}/{args.lv}: the reader went away")
        finally:
            lvm.remove(args.vg, snapshot)
    return None


image_extract.configure = lambda p: _options(p, "--inner")


@command("image-overlay", "write a tar.gz from stdin under a path of an image's filesystem")
def image_overlay(args):
    where = f"{args.vg}/{args.lv}"
    with locks.lock("lv", where):
        rep = lvm.report(args.vg)
        lv = _image_lv(rep, args.lv, "write")
        users = sorted(other.name for other in rep.lvs.values() if other.origin == lv.name)
        if users:
            raise NodeError(f"{where} is the origin of {', '.join(users[:5])}: VMs or snapshots "
                            "use it, overlay a new image (a clone) instead")
        lvops.require_unexported(rep, lv)
        lvops.ensure_active(lv)
        if fsimage.release_stale(lv.path):         # an overlay that died half-way
            lv = lvm.report(args.vg).get(lv.name)
        if lv.attr[5:6] == "o":
            raise NodeError(f"{where} is open (in use on the storage node): refusing to write it")
        with fsimage.block_device(lv.path, args.partition, read_only=False) as device:
            fs = fsimage.filesystem_of(device, where + (f" partition {args.partition}"
                                                        if args.partition else ""))
            with fsimage.mounted(device, fs, read_only=False) as point:
                files, written = fsimage.tar_in(point, args.inner, sys.stdin.buffer)
    return {"vg": args.vg, "lv": args.lv, "at": args.inner, "fs": fs, "files": files,
            "bytes": written}


image_overlay.configure = lambda p: _options(p, "--at")
