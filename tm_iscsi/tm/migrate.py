"""premigrate / postmigrate / failmigrate (live migration), with the fan-out to the other TM
drivers of the VM's disks that oned leaves to the system datastore's driver."""
import base64
import os
import re
import subprocess

from .. import attachment, cachemode, log, protocol, volumes
from ..errors import DriverError
from ..one.errors import OneError
from ..one.objects import VirtualMachine
from ..settings import remotes_dir
from . import moves

OUR_TM = "iscsi_lvm"


def _our_disks(ctx, vm):
    for disk in vm.disks:
        if disk.tm_mad in (None, OUR_TM) and (disk.is_volatile or disk.source):
            yield disk


def _vm(ctx, args, stdin_xml):
    if stdin_xml:
        try:
            vm = VirtualMachine.from_xml(base64.b64decode(stdin_xml).decode())
        except (ValueError, UnicodeDecodeError, OneError):
            vm = None   # unreadable: oned's own record serves
        if vm is not None:
            if vm.integer("ID") != args.vmid:
                raise DriverError(f"the VM document on stdin is VM {vm.text('ID')}, not VM "
                                  f"{args.vmid} of the arguments")
            return vm
    return ctx.vm(args.vmid)


def _disk_plans(ctx, vm):
    for disk in _our_disks(ctx, vm):
        volume = volumes.of_disk(ctx, vm, disk.disk_id)
        mode, image_lv = volumes.cache_plan(vm, disk.disk_id, volume)
        yield disk, volume, mode, image_lv


def premigrate(ctx, args, stdin_xml=None):
    """The destination gets every disk before the switch. The source's write-back caches are
    flushed and stay clean (writes go through to the storage node), so both hosts see the same
    bytes during the move; the destination assembles without the read layer, because the
    region map is still written by the source and cannot be trusted by a second host.
    Node calls, whatever the number of disks and datastores: the source packs the VM directory
    after flushing its write-back disks, each storage node exports every disk, the destination
    unpacks the directory and assembles every disk."""
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host == args.dst_host:
        _migrate_other(args, "premigrate", vm, stdin_xml)
        return
    wants = []
    plans = list(_disk_plans(ctx, vm))
    packed = moves.pack_dir(ctx, args.src_host, args.vm_dir,
                            flush=[volume.lv for _, volume, mode, _ in plans
                                   if cachemode.has_writeback(mode)])
    for disk, volume, mode, image_lv in plans:
        wants.append(attachment.Attach(
            volume, f"{args.vm_dir}/disk.{disk.disk_id}", protocol.without_read(mode),
            wb_host=args.dst_host if cachemode.has_writeback(mode) else None,
            wb_from=args.src_host,
            map="stale" if cachemode.has_read(mode) else "keep"))
    if wants:
        attachment.attach(ctx, args.dst_host, wants, unpack=(args.vm_dir, packed))
    else:
        moves.unpack_dir(ctx, args.dst_host, args.vm_dir, packed)
    _migrate_other(args, "premigrate", vm, stdin_xml)


def postmigrate(ctx, args, stdin_xml=None):
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host != args.dst_host:
        releases = [attachment.Release(
            volume, f"{args.vm_dir}/disk.{disk.disk_id}", flush=True, image_lv=image_lv,
            keep_wb_guard=True, map="forget" if volume.kind == "clone" else "keep")
            for disk, volume, mode, image_lv in _disk_plans(ctx, vm)]
        removed = releases and attachment.detach(ctx, args.src_host, releases,
                                                 remove_dir=args.vm_dir)
        if not removed:
            moves.remove_dir(ctx, args.src_host, args.vm_dir)
    _migrate_other(args, "postmigrate", vm, stdin_xml)


def failmigrate(ctx, args, stdin_xml=None):
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host != args.dst_host:
        # Nothing ran on the destination: its (clean, unused) stacks go, the source keeps the
        # disks and their region maps stay valid (the source was the only writer).
        releases = [attachment.Release(
            volume, f"{args.vm_dir}/disk.{disk.disk_id}", flush=False, image_lv=image_lv,
            keep_wb_guard=True, map="fresh" if cachemode.has_read(mode) else "keep",
            wb_host=args.src_host if cachemode.has_writeback(mode) else None)
            for disk, volume, mode, image_lv in _disk_plans(ctx, vm)]
        removed = releases and attachment.detach(ctx, args.dst_host, releases,
                                                 remove_dir=args.vm_dir)
        if not removed:
            moves.remove_dir(ctx, args.dst_host, args.vm_dir)
    _migrate_other(args, "failmigrate", vm, stdin_xml)


_TM_NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


def _migrate_other(args, action, vm, stdin_xml):
    """oned calls the migrate hooks of the system datastore's TM only; each other TM of the VM's
    disks is called here with the same argv plus our name (so it does not fan out again)."""
    if args.caller_tm:
        return
    others = sorted({d.tm_mad for d in vm.disks if d.tm_mad and d.tm_mad != OUR_TM})
    for tm in others:
        if not _TM_NAME_RE.fullmatch(tm):
            # A name from the VM's XML never becomes a path of its own ("../../x").
            raise DriverError(f"disk TM_MAD {tm[:80]!r} is not a driver name "
                              "(letters, digits, '_' and '-'); refusing to run it")
        script = os.path.join(remotes_dir(), "tm", tm, action)
        if not os.access(script, os.X_OK):
            log.info(f"no {action} for TM {tm} at {script}; skipped")
            continue
        argv = [script, args.src_host, args.dst_host, args.vm_dir, str(args.vmid),
                str(args.dsid), OUR_TM]
        result = subprocess.run(argv, input=(stdin_xml or "").encode(), capture_output=True)
        if result.returncode != 0:
            raise DriverError(f"{tm} {action} failed: "
                              f"{result.stderr.decode(errors='replace').strip()}")
