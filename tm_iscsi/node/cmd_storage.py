"""Storage-node commands: the thin pool, image/clone/volatile LVs and their LIO exports.

Every command re-reads the real state first and only changes what differs, so a re-run after a
failure at any step converges, and a re-run after success changes nothing. LV metadata changes
hold the VG's lock; long data copies hold only their LV's lock (an image upload must not stop
every clone of the datastore for minutes); LIO changes hold the target's lock.
"""
import argparse
import json
import os
import re
import stat
import sys
import tempfile

from .. import naming, protocol
from . import confine, iscsi, lio, locks, lvm, lvops
from . import run as _run
from .progress import Progress as _Progress, convert_with_progress
from .chap import add_option as chap_option, credentials as chap_credentials
from .cli import checked_command as command
from .errors import NodeError
from .naming_args import LV, TAG, checked as _checked, int_range as _int_range



MIB = 1024 * 1024
CHUNK = 4 * MIB
SPOOL_DIR = os.environ.get("TM_ISCSI_SPOOL_DIR", "/var/tmp")
# A multi-GiB image converted inside a slow VM can take long; the timeout is only a backstop.
CONVERT_TIMEOUT = 6 * 3600
FILESYSTEMS = lvops.FILESYSTEMS
mkfs_argv = lvops.mkfs_argv


# -- argument types: bad input is refused before anything runs (exit 2) ------------------------



NAME = _checked(naming.valid_name, "name (letters, digits and +_.- only)")
IQN = _checked(iscsi.valid_iqn, "iSCSI name (iqn.YYYY-MM.domain[:name])")
IQN_BASE = _checked(protocol.valid_iqn_base, "IQN base (iqn.YYYY-MM.domain, without ':', at "
                    f"most {protocol.IQN_BASE_MAX} characters)")




SIZE_MIB = _int_range(1, 1024 * 1024 * 1024, "size in MiB")
PERCENT = _int_range(1, 100, "percentage")
FILL = _int_range(0, 100, "fill percentage")
PORT = _int_range(1, 65535, "TCP port")


def _ip(value):
    import ipaddress
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address")


def _vg_option(p):
    p.add_argument("--vg", required=True, type=confine.storage_vg,
                   help="volume group of the datastore (one of node.conf's VGS)")


def _pool_option(p):
    p.add_argument("--pool", default=naming.THIN_POOL, type=NAME, help="thin pool LV")


def _lv_lock(vg, lv):
    return locks.lock("lv", f"{vg}/{lv}")


_require_pool = lvops.require_pool
_require_lv = lvops.require_lv
_stamped = lvops.stamped
_check_fill = lvops.check_fill
_ensure_active = lvops.ensure_active






# -- pool --------------------------------------------------------------------------------------

@command("pool-ensure", "create the VG's thin pool if it is missing")
def pool_ensure(args):
    with locks.lock("vg", args.vg):
        rep = lvm.report(args.vg)
        existing = rep.get(args.pool)
        if existing is not None:
            if not existing.is_thin_pool:
                raise NodeError(f"{args.vg}/{args.pool} exists but is a {existing.segtype} LV, "
                                "not a thin pool; choose another pool name")
            return {"vg": args.vg, "pool": args.pool, "created": False}
        _run.info(f"creating thin pool {args.vg}/{args.pool} on {args.data_percent}% of the VG")
        lvm.create_thin_pool(args.vg, args.pool, args.data_percent)
        return {"vg": args.vg, "pool": args.pool, "created": True}


def _pool_ensure_options(p):
    _vg_option(p)
    _pool_option(p)
    p.add_argument("--data-percent", type=PERCENT, default=90,
                   help="share of the VG the pool's data gets (default 90)")


pool_ensure.configure = _pool_ensure_options


@command("pool-status", "data and metadata fill of the thin pool")
def pool_status(args):
    return lvm.pool_status(lvm.report(args.vg), args.pool)


def _pool_status_options(p):
    _vg_option(p)
    _pool_option(p)


pool_status.configure = _pool_status_options


# -- LVs ---------------------------------------------------------------------------------------

def _lv_result(lv, **extra):
    result = {"vg": lv.vg, "lv": lv.name, "path": lv.path, "size_bytes": lv.size_bytes}
    result.update(extra)
    return result


@command("lv-create", "create a thin LV in the pool (grow an existing one)")
def lv_create(args):
    with locks.lock("vg", args.vg):
        rep = lvm.report(args.vg)
        size, created = lvops.ensure_thin(rep, args.pool, args.lv, args.size_mib, args.tag,
                                          args.max_fill)
        return {"vg": args.vg, "lv": args.lv, "path": lvm.lv_path(args.vg, args.lv),
                "size_bytes": size, "created": created}


def _lv_create_options(p):
    _vg_option(p)
    _pool_option(p)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--size-mib", required=True, type=SIZE_MIB)
    p.add_argument("--tag", action="append", type=TAG, help="LV tag (repeatable)")
    p.add_argument("--max-fill", type=FILL, default=90,
                   help="refuse when pool data or metadata is fuller than this (default 90)")


lv_create.configure = _lv_create_options


@command("lv-snapshot", "thin snapshot of an LV (O(1)), optionally larger than its origin")
def lv_snapshot(args):
    with locks.lock("vg", args.vg):
        rep = lvm.report(args.vg)
        size, created = lvops.ensure_snapshot(rep, args.origin, args.lv, args.tag,
                                              args.max_fill, args.size_mib)
        return {"vg": args.vg, "lv": args.lv, "origin": args.origin,
                "path": lvm.lv_path(args.vg, args.lv), "size_bytes": size, "created": created}


def _lv_snapshot_options(p):
    _vg_option(p)
    p.add_argument("--origin", required=True, type=LV)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--size-mib", type=SIZE_MIB, help="grow the snapshot to this size")
    p.add_argument("--tag", action="append", type=TAG)
    p.add_argument("--max-fill", type=FILL, default=90)


lv_snapshot.configure = _lv_snapshot_options


@command("lv-revert", "replace an LV's content by a new thin snapshot of one of its snapshots, "
                     "the new one made before the old one goes")
def lv_revert(args):
    with locks.lock("vg", args.vg), _lv_lock(args.vg, args.lv):
        rep = lvm.report(args.vg)
        size = lvops.replace_with_snapshot(rep, args.lv, args.to, args.tag, args.max_fill)
        return {"vg": args.vg, "lv": args.lv, "to": args.to, "size_bytes": size,
                "path": lvm.lv_path(args.vg, args.lv)}


def _lv_revert_options(p):
    _vg_option(p)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--to", required=True, type=LV, help="the snapshot whose content it takes")
    p.add_argument("--tag", action="append", type=TAG, help="the new LV's tags (repeatable)")
    p.add_argument("--max-fill", type=FILL, default=90)


lv_revert.configure = _lv_revert_options


@command("lv-remove", "remove an LV that is not exported")
def lv_remove(args):
    with locks.lock("vg", args.vg), _lv_lock(args.vg, args.lv):
        rep = lvm.report(args.vg)
        lv = rep.get(args.lv)
        if lv is None:
            return {"vg": args.vg, "lv": args.lv, "removed": False}
        if lv.is_thin_pool:
            raise NodeError(f"{args.vg}/{args.lv} is the thin pool; lv-remove removes volumes, "
                            "not pools")
        confine.require_owned(lv, "remove")
        if args.require_tag and args.require_tag not in lv.tags:
            raise NodeError(f"{args.vg}/{args.lv} does not carry tag {args.require_tag} (tags: "
                            f"{', '.join(lv.tags) or 'none'}); refusing to remove it")
        lvops.remove(rep, args.lv)
        return {"vg": args.vg, "lv": args.lv, "removed": True}


def _lv_remove_options(p):
    _vg_option(p)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--require-tag", type=TAG, help="remove only if the LV carries this tag")


lv_remove.configure = _lv_remove_options


@command("lv-resize", "grow an LV (never shrinks)")
def lv_resize(args):
    with locks.lock("vg", args.vg):
        rep = lvm.report(args.vg)
        lv = _require_lv(rep, args.lv, "resize")
        want = rep.round_up(args.size_mib * MIB)
        if want < lv.size_bytes:
            raise NodeError(f"{args.vg}/{args.lv} is {lv.size_bytes} bytes; shrinking it to "
                            f"{want} would destroy data and is refused")
        resized = False
        if want > lv.size_bytes:
            _run.info(f"growing {args.vg}/{args.lv} from {lv.size_bytes} to {want} bytes")
            lvm.extend(args.vg, args.lv, want)
            resized = True
        return {"vg": args.vg, "lv": args.lv, "path": lv.path, "size_bytes": want,
                "resized": resized}


def _lv_resize_options(p):
    _vg_option(p)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--size-mib", required=True, type=SIZE_MIB)


lv_resize.configure = _lv_resize_options


@command("lv-info", "size, origin, tags and state of one LV")
def lv_info(args):
    lv = lvm.report(args.vg).get(args.lv)
    if lv is None:
        return {"vg": args.vg, "lv": args.lv, "exists": False, "size_bytes": None,
                "origin": None, "tags": [], "active": False, "path": None}
    return {"vg": args.vg, "lv": args.lv, "exists": True, "size_bytes": lv.size_bytes,
            "origin": lv.origin or None, "tags": lv.tags, "active": lv.active, "path": lv.path,
            "data_percent": lv.data_percent}


def _lv_options(p):
    _vg_option(p)
    p.add_argument("--lv", required=True, type=LV)


lv_info.configure = _lv_options


@command("lv-list", "the VG's volumes (not its pools), optionally with a tag")
def lv_list(args):
    rep = lvm.report(args.vg)
    rows = []
    for name in sorted(rep.lvs):
        lv = rep.lvs[name]
        if lv.is_thin_pool or (args.tag and args.tag not in lv.tags):
            continue
        rows.append({"lv": name, "size_bytes": lv.size_bytes, "origin": lv.origin or None,
                     "tags": lv.tags})
    return {"vg": args.vg, "lvs": rows}


def _lv_list_options(p):
    _vg_option(p)
    p.add_argument("--tag", type=TAG)


lv_list.configure = _lv_list_options


# -- data --------------------------------------------------------------------------------------

def _read_full(stream, size):
    """Up to `size` bytes; short only at end of input (pipes return what they have)."""
    parts, got = [], 0
    while got < size:
        data = stream.read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _input_size(stream):
    """The input's size when stdin is a regular file (then too large is refused up front)."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


_ZEROS = bytes(CHUNK)


def _copy_into(src, dst_path, limit, what, sparse=False, expected=None):
    """Copy `src` (a binary stream) onto the block device at dst_path, at most `limit` bytes
    (exactly `expected` bytes when the sender said how many).
    With `sparse`, all-zero chunks are skipped: the device is a thin LV that reads as zeros, and
    leaving them unwritten keeps the pool from provisioning them."""
    progress = _Progress(what, expected or limit)
    written = 0
    fd = os.open(dst_path, os.O_WRONLY)
    try:
        while True:
            chunk = _read_full(src, CHUNK)
            if not chunk:
                break
            if expected is not None and written + len(chunk) > expected:
                raise NodeError(f"{what}: the input is longer than the {expected} bytes "
                                "announced; the upload is corrupt")
            if written + len(chunk) > limit:
                # Only a pipe of unknown length gets here, after the LV is full of its start.
                raise NodeError(f"{what}: the input is larger than the LV ({limit} bytes); the "
                                "LV holds only its first part now; grow the LV (lv-resize) and "
                                "write again")
            if not (sparse and chunk == _ZEROS[:len(chunk)]):
                view = memoryview(chunk)
                offset = 0
                while offset < len(chunk):
                    offset += os.pwrite(fd, view[offset:], written + offset)
            written += len(chunk)
            progress.update(written)
        if expected is not None and written != expected:
            raise NodeError(f"{what}: the input ended after {written} of the {expected} bytes "
                            "announced; the upload was cut short, write again")
        # The data must be on the storage node's disk, not in its page cache, before the
        # front-end tells oned the image is ready.
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _qemu_img_info(path, what):
    result = _run.run(["qemu-img", "info", "--output", "json", "-f", "qcow2", path],
                      timeout=120, what=f"{what}: checking the uploaded qcow2 image")
    try:
        info = json.loads(result.stdout)
    except ValueError:
        raise NodeError(f"{what}: qemu-img info printed no JSON for the uploaded image")
    # An uploaded image naming a backing or data file would make qemu-img read that file on
    # the storage node (another image's LV, say) into this one.
    data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
    if info.get("backing-filename") or info.get("full-backing-filename") or data_file:
        raise NodeError(f"{what}: the qcow2 image refers to another file "
                        f"({info.get('backing-filename') or data_file}); upload a standalone "
                        "image (qemu-img convert -O qcow2 without -B)")
    return info


_SPOOL_PREFIX = "tm_iscsi-upload-"


def _remove_dead_spools():
    """Spools of uploads whose process was killed (SIGKILL skips the cleanup): images can be
    large, and /var/tmp would fill up with them. The name carries the writer's pid."""
    try:
        names = os.listdir(SPOOL_DIR)
    except OSError:
        return
    for name in names:
        m = re.match(re.escape(_SPOOL_PREFIX) + r"(\d+)-.*\.qcow2$", name)
        if not m or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        try:
            os.unlink(os.path.join(SPOOL_DIR, name))
        except OSError:
            pass


def _write_qcow2(stdin, lv, what, expected=None):
    # qemu-img needs a seekable file; the spool lives on local disk, never in the LV's VG.
    _remove_dead_spools()
    try:
        spool = tempfile.NamedTemporaryFile(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-",
                                            suffix=".qcow2", dir=SPOOL_DIR)
    except OSError as err:
        raise NodeError(f"{what}: cannot create a spool file in {SPOOL_DIR}: {err.strerror}")
    with spool:
        progress = _Progress(f"{what}: receiving", expected or lv.size_bytes)
        received = 0
        try:
            while True:
                chunk = stdin.read(CHUNK)
                if not chunk:
                    break
                spool.write(chunk)
                received += len(chunk)
                progress.update(received)
            spool.flush()
            if expected is not None and received != expected:
                raise NodeError(f"{what}: received {received} of the {expected} bytes "
                                "announced; the upload was cut short, write again")
        except OSError as err:
            raise NodeError(f"{what}: spooling the image to {SPOOL_DIR} failed: {err.strerror}; "
                            f"free space there")
        info = _qemu_img_info(spool.name, what)
        virtual = int(info.get("virtual-size", 0))
        if virtual > lv.size_bytes:
            raise NodeError(f"{what}: the image's virtual size {virtual} is larger than the LV "
                            f"({lv.size_bytes} bytes); grow the LV first (lv-resize)")
        argv = ["qemu-img", "convert", "-p", "-f", "qcow2", "-O", "raw", "-n"]
        if lv.provisioned_nothing:
            # A thin LV that never had a block mapped reads as zeros: skip writing them.
            argv.append("--target-is-zero")
        argv += [spool.name, lv.path]
        convert_with_progress(argv, f"{what}: converting", CONVERT_TIMEOUT)
    fd = os.open(lv.path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return virtual


@command("lv-write", "write image data from stdin into an existing LV")
def lv_write(args):
    what = f"lv-write {args.vg}/{args.lv}"
    stdin = sys.stdin.buffer
    with _lv_lock(args.vg, args.lv):
        lv = _require_lv(lvm.report(args.vg), args.lv, "write")
        # The input's length, when the sender gave it or stdin is a file: too large is then
        # refused before a byte is written (a pipe of unknown length shows it only at the end).
        size = args.size_bytes if args.size_bytes is not None else _input_size(stdin)
        if args.format == "raw" and size is not None and size > lv.size_bytes:
            raise NodeError(f"{what}: the input ({size} bytes) is larger than the LV "
                            f"({lv.size_bytes} bytes); grow the LV first (lv-resize)")
        _ensure_active(lv)
        if args.format == "qcow2":
            written = _write_qcow2(stdin, lv, what, expected=size)
        else:
            written = _copy_into(stdin, lv.path, lv.size_bytes, what,
                                 sparse=lv.provisioned_nothing, expected=size)
    return {"vg": args.vg, "lv": args.lv, "bytes_written": written}


def _lv_write_options(p):
    _lv_options(p)
    p.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    p.add_argument("--size-bytes", type=_int_range(0, 2 ** 62, "input size in bytes"),
                   help="length of the input: checked before writing and at the end")


lv_write.configure = _lv_write_options


@command("lv-read", "the LV's bytes on stdout (no JSON)")
def lv_read(args):
    lv = _require_lv(lvm.report(args.vg), args.lv, "read")
    _ensure_active(lv)
    out = sys.stdout.buffer
    remaining = lv.size_bytes
    try:
        with open(lv.path, "rb", buffering=0) as src:
            while remaining > 0:
                chunk = src.read(min(CHUNK, remaining))
                if not chunk:
                    raise NodeError(f"lv-read {args.vg}/{args.lv}: short read, "
                                    f"{remaining} bytes missing")
                out.write(chunk)
                remaining -= len(chunk)
        out.flush()
    except BrokenPipeError:
        raise NodeError(f"lv-read {args.vg}/{args.lv}: the reader went away")
    return None


lv_read.configure = _lv_options


@command("lv-copy", "full copy of one LV's data onto another (a benchmark baseline)")
def lv_copy(args):
    what = f"lv-copy {args.vg}/{args.src} -> {args.dst}"
    if args.src == args.dst:
        raise NodeError(f"{what}: source and destination are the same LV")
    with _lv_lock(args.vg, args.dst):
        rep = lvm.report(args.vg)
        src = _require_lv(rep, args.src, "copy")
        dst = _require_lv(rep, args.dst, "overwrite")
        if dst.size_bytes < src.size_bytes:
            raise NodeError(f"{what}: the destination ({dst.size_bytes} bytes) is smaller than "
                            f"the source ({src.size_bytes} bytes)")
        _ensure_active(src)
        _ensure_active(dst)
        with open(src.path, "rb", buffering=0) as f:
            copied = _copy_into(f, dst.path, src.size_bytes, what, expected=src.size_bytes)
    return {"vg": args.vg, "src": args.src, "dst": args.dst, "bytes": copied}


def _lv_copy_options(p):
    _vg_option(p)
    p.add_argument("--src", required=True, type=LV)
    p.add_argument("--dst", required=True, type=LV)


lv_copy.configure = _lv_copy_options


@command("lv-mkfs", "format an LV (raw: leave it blank)")
def lv_mkfs(args):
    with _lv_lock(args.vg, args.lv):
        lv = _require_lv(lvm.report(args.vg), args.lv, "format")
        formatted = lvops.ensure_fs(lv, args.fs)
    return {"vg": args.vg, "lv": args.lv, "fs": args.fs, "formatted": formatted}


def _lv_mkfs_options(p):
    _lv_options(p)
    p.add_argument("--fs", required=True, choices=FILESYSTEMS)


lv_mkfs.configure = _lv_mkfs_options


# -- LIO ---------------------------------------------------------------------------------------

@command("export", "export an LV over iSCSI to one host initiator")
def export(args):
    chap = chap_credentials(args)
    # Always asked of LVM, never taken from /dev/<vg>/<lv> (which may name any device): the LV
    # must exist in this VG and be tm_iscsi's.
    with locks.lock("vg", args.vg):
        lv = _require_lv(lvm.report(args.vg), args.lv, "export")
        _ensure_active(lv)
    dev = lv.path
    iqn = naming.target_iqn(args.vg, args.lv, args.iqn_base)
    if not iscsi.valid_iqn(iqn):
        raise NodeError(f"the target name {iqn} made from {args.vg}/{args.lv} is not a valid IQN")
    with lio.config_lock():
        _run.info(f"exporting {dev} as {iqn} to {args.initiator}")
        result = lio.export(iqn, naming.backstore_name(args.vg, args.lv), dev,
                            naming.lun_serial(args.vg, args.lv), args.initiator,
                            portal_ip=args.portal_ip, port=args.port, chap=chap,
                            readonly=args.readonly)
        changed = lio.Changed()
        changed.add(iqn, naming.backstore_name(args.vg, args.lv))
        lio.save_config(changed=changed)
    return result


def _lio_lv_options(p):
    _vg_option(p)
    p.add_argument("--lv", required=True, type=LV)
    p.add_argument("--iqn-base", default=naming.DEFAULT_IQN_BASE, type=IQN_BASE)


def _export_options(p):
    _lio_lv_options(p)
    p.add_argument("--initiator", required=True, type=IQN, help="the host's initiator IQN")
    p.add_argument("--portal-ip", default="0.0.0.0", type=_ip)
    p.add_argument("--port", default=iscsi.DEFAULT_PORT, type=PORT)
    chap_option(p)
    p.add_argument("--readonly", action="store_true", help="write-protect the host's LUN")


export.configure = _export_options


@command("unexport", "remove a host's access; the target goes with its last host")
def unexport(args):
    iqn = naming.target_iqn(args.vg, args.lv, args.iqn_base)
    with lio.config_lock():
        removed, remaining = lio.unexport(iqn, naming.backstore_name(args.vg, args.lv),
                                          args.initiator)
        changed = lio.Changed()
        changed.add(iqn, naming.backstore_name(args.vg, args.lv))
        lio.save_config(changed=changed)
    return {"iqn": iqn, "removed_target": removed, "initiators": remaining}


def _unexport_options(p):
    _lio_lv_options(p)
    p.add_argument("--initiator", type=IQN, help="remove only this host's ACL")


unexport.configure = _unexport_options


@command("exports", "the LIO targets with their backstore, serial and initiators")
def exports(args):
    with lio.config_lock():
        return {"targets": lio.exports(), "saved": lio.saved_acls()}


@command("fence", "revoke an initiator's access to every target (ends its sessions)")
def fence(args):
    fenced = []
    with lio.config_lock():
        for iqn in lio.targets_with_initiator(args.initiator):
            if lio.remove_acl(iqn, args.initiator):
                fenced.append(iqn)
        # Also when nothing changed now: a fence interrupted before its save converges here.
        lio.save_config()
    if fenced:
        _run.info(f"fenced {args.initiator} from {len(fenced)} target(s)")
    return {"initiator": args.initiator, "targets": fenced}


def _fence_options(p):
    p.add_argument("--initiator", required=True, type=IQN)


fence.configure = _fence_options
