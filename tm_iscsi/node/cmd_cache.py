"""Host commands for the node-local caches (dmcache/): the cache VG, per-disk stacks, their flush
and teardown, the status the monitor reports, and boot-time activation.

What the front-end does around them: export and attach (without --link) the disk's clone LUN,
and for the read modes the image's base LUN and the disk's map LUN, then `stack-assemble` with the
stable paths `attach` returned and --link; after `stack-teardown`, detach those LUNs (the base
only when no other disk of the image on the host still uses it: teardown reports whether the read
cache still has users).
"""
import argparse
import json
import re
import time

from dmcache import activate as _activate
from dmcache import localvg, orphans as _orphans, readcache, stack, state

from .. import naming
from . import iscsi, locks, lvm, paths
from .cli import checked_command as command
from .targets import LINK, SERIAL
from .errors import NodeError
from .naming_args import checked as _checked, int_range as _int_range

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}$")
_DEV_RE = re.compile(r"^/dev/[A-Za-z0-9_.+@=:/-]{1,4000}$")
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
MIB = 1024 * 1024




# A stack is named after the disk's LV (vm-42-disk-0, img-7 for a persistent image).
NAME = _checked(lambda v: bool(_NAME_RE.match(v)) and naming.is_scheme_lv(v),
                "stack name (the disk's LV: img-N or vm-N-disk-N)")
VG = _checked(lambda v: bool(_NAME_RE.match(v)) and v == localvg.DEFAULT_VG,
              f"cache VG: this host's is {localvg.DEFAULT_VG} (CACHE_VG in node.conf)")
DEV = _checked(lambda v: bool(_DEV_RE.match(v)) and ".." not in v.split("/"),
               "device path (/dev/...)")
KEY = _checked(lambda v: bool(_KEY_RE.match(v)), "base key (printable, no spaces, <= 200)")




def _luns(value):
    """{"clone": {"portal", "iqn", "serial"}, "base": {...}, "map": {...}}: where each LUN is, for
    boot-time activation. Nothing else (no credentials) is accepted."""
    try:
        doc = json.loads(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--luns-json is not JSON: {err}")
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError("--luns-json must be an object")
    luns = {}
    for role, lun in doc.items():
        if role not in ("clone", "base", "map"):
            raise argparse.ArgumentTypeError(f"--luns-json: unknown LUN role {role!r} (clone, "
                                             "base, map)")
        if not isinstance(lun, dict) or set(lun) != {"portal", "iqn", "serial"}:
            raise argparse.ArgumentTypeError(f"--luns-json: {role} must have exactly portal, "
                                             "iqn and serial")
        try:
            iscsi.parse_portal(lun["portal"])
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(f"--luns-json: {role}: {err}")
        if not isinstance(lun["iqn"], str) or not iscsi.valid_iqn(lun["iqn"]):
            raise argparse.ArgumentTypeError(f"--luns-json: {role}: {lun['iqn']!r} is not an "
                                             "iSCSI name")
        try:
            SERIAL(lun["serial"])
        except (argparse.ArgumentTypeError, TypeError):
            raise argparse.ArgumentTypeError(f"--luns-json: {role}: {lun['serial']!r} is not a "
                                             "unit serial")
        luns[role] = state.Lun(lun["portal"], lun["iqn"], lun["serial"])
    return luns


def _vg_option(p):
    p.add_argument("--vg", type=VG, default=localvg.DEFAULT_VG, help="the local cache VG")


def _timeout_option(p, default):
    p.add_argument("--timeout", type=_int_range(1, 86400, "timeout in seconds"),
                   default=default, help="seconds a flush may take")


# -- cache-init --------------------------------------------------------------------------------

@command("cache-init", "make the local cache VG on a blank disk of this host")
def cache_init(args):
    with locks.lock("localvg", args.vg):
        return localvg.init(args.device, args.vg)


def _init_options(p):
    p.add_argument("--device", required=True, type=DEV, help="the local cache disk")
    _vg_option(p)


cache_init.configure = _init_options


# -- stack-assemble ----------------------------------------------------------------------------

@command("stack-assemble", "build (or complete) a VM disk's cache stack and point its link at it")
def stack_assemble(args):
    link = paths.checked(args.link, leaf_may_be_link=True) if args.link else None
    req = stack.Request(
        name=args.name, mode=args.mode, clone_dev=args.clone_dev, base_key=args.base_key,
        base_dev=args.base_dev, map_dev=args.map_dev,
        wb_size_bytes=args.wb_size_mib * MIB if args.wb_size_mib else None, link=link,
        luns=args.luns_json or {}, vg=args.vg)
    # This command is not told the disk's write-back epoch (host-attach is): it keeps the one
    # the stack was made in, never a reason to drop its cache.
    recorded = state.load_stack(args.name)
    req.wb_epoch = recorded.wb_epoch if recorded is not None else None
    _orphans.resume_orphans()
    if stack.has_wb(req.mode) or stack.has_read(req.mode):
        if lvm.local_report(req.vg, missing_ok=True) is None:
            raise NodeError(f"the local cache VG {req.vg} does not exist on this host; run "
                            f"cache-init --device DISK --vg {req.vg} first")
    return stack.assemble(req)


def _assemble_options(p):
    p.add_argument("--name", required=True, type=NAME, help="the disk, e.g. vm-42-disk-0")
    p.add_argument("--mode", required=True, choices=state.MODES)
    p.add_argument("--clone-dev", required=True, type=DEV, help="the clone LUN (stable path)")
    p.add_argument("--base-key", type=KEY, help="names the version of the image's base")
    p.add_argument("--base-dev", type=DEV, help="the image's base LUN (read modes)")
    p.add_argument("--map-dev", type=DEV, help="the disk's region map LUN (read modes)")
    p.add_argument("--wb-size-mib", type=_int_range(1, 1 << 24, "write-back cache size (MiB)"))
    p.add_argument("--link", type=LINK, help="symlink to point at the top of the stack")
    p.add_argument("--luns-json", type=_luns, help="portal/iqn/serial of each LUN")
    _vg_option(p)


stack_assemble.configure = _assemble_options


# -- stack-flush -------------------------------------------------------------------------------

def flush_stacks(names, seconds):
    """Flush every stack of `names` and keep it clean, within `seconds` in all (and the call's
    budget): what stack-flush and dir-pack --flush (a live migration's source) do."""
    _orphans.resume_orphans()
    from . import deadline
    until = time.monotonic() + seconds
    results = []
    for name in names:
        left = max(1, int(deadline.bounded(until - time.monotonic())))
        results.append(stack.flush(name, left))
    return results


@command("stack-flush", "write stacks' dirty blocks back to their clones and keep them clean")
def stack_flush(args):
    results = flush_stacks(args.name, args.timeout)
    # One stack (the usual call): its result as it is; several (a VM's disks): one list.
    return results[0] if len(results) == 1 else {"stacks": results}


def _flush_options(p):
    p.add_argument("--name", required=True, type=NAME, action="append",
                   help="the stack (repeatable: every write-back disk of a VM in one call)")
    _timeout_option(p, 600)


stack_flush.configure = _flush_options


# -- stack-writeback ---------------------------------------------------------------------------

@command("stack-writeback", "put a stack left clean by stack-flush back into write-back")
def stack_writeback(args):
    return stack.resume_writeback(args.name)


def _writeback_options(p):
    p.add_argument("--name", required=True, type=NAME)


stack_writeback.configure = _writeback_options


# -- stack-teardown ----------------------------------------------------------------------------

@command("stack-teardown", "remove a stack (flushing or dropping its write-back cache)")
def stack_teardown(args):
    _orphans.resume_orphans()
    return stack.teardown(args.name, args.flush, args.timeout, args.vg)


def _teardown_options(p):
    p.add_argument("--name", required=True, type=NAME)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--flush", action="store_true", help="write dirty blocks back first")
    how.add_argument("--drop", action="store_true",
                     help="discard dirty blocks (only for a disk that is deleted next)")
    _timeout_option(p, 600)
    _vg_option(p)


stack_teardown.configure = _teardown_options


# -- cache-status ------------------------------------------------------------------------------

@command("cache-status", "the local cache VG, read caches and stacks with their counters")
def cache_status(args):
    rep = lvm.local_report(args.vg, missing_ok=True)
    stacks = state.list_stacks()
    return {
        "vg": args.vg, "present": rep is not None,
        "size_bytes": rep.size_bytes if rep else 0,
        "free_bytes": rep.free_bytes if rep else 0,
        "read_caches": [readcache.describe(rec, stacks) for rec in state.list_records()
                        if rec.vg == args.vg],
        "stacks": [stack.describe(st) for st in stacks],
    }


cache_status.configure = _vg_option


# -- cache-warm --------------------------------------------------------------------------------

@command("cache-warm", "copy what running VMs read into their images' read caches (a timer's job)")
def cache_warm(args):
    started = time.monotonic()
    caches = readcache.warm_active(args.vg, args.seconds)
    failed = [c for c in caches if c.get("error")]
    if failed:
        raise NodeError(f"warm-up of {len(failed)} read cache(s) failed, the others were done: "
                        f"{failed[0]['id']} ({failed[0]['key']}): {failed[0]['error']}")
    return {"vg": args.vg, "caches": caches,
            "bytes": sum(c["bytes"] for c in caches),
            "complete": all(c["complete"] for c in caches),
            "seconds": round(time.monotonic() - started, 3)}


def _warm_options(p):
    _vg_option(p)
    p.add_argument("--seconds", type=_int_range(0, 3600, "time budget in seconds"), default=60,
                   help="stop copying after this long; the rest is kept for the next run")


cache_warm.configure = _warm_options


# -- activate ----------------------------------------------------------------------------------

@command("activate", "at boot: log in, re-assemble and flush every recorded stack")
def activate(args):
    return _activate.activate(args.timeout)


def _activate_options(p):
    _timeout_option(p, 1800)


activate.configure = _activate_options
