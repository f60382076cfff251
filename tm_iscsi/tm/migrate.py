"""premigrate / postmigrate / failmigrate (live migration), with the fan-out to the other TM
drivers of the VM's disks that oned leaves to the system datastore's driver."""
import base64
import os
import subprocess
import sys

from .. import attachment, log, volumes
from ..errors import DriverError
from ..one.objects import VirtualMachine
from ..one.tm_args import HostPath
from . import moves

OUR_TM = "iscsi_lvm"


def _our_disks(ctx, vm):
    for disk in vm.disks:
        if disk.tm_mad in (None, OUR_TM) and (disk.is_volatile or disk.source):
            yield disk


def _vm(ctx, args, stdin_xml):
    if stdin_xml:
        try:
            return VirtualMachine.from_xml(base64.b64decode(stdin_xml).decode())
        except (ValueError, UnicodeDecodeError):
            pass
    return ctx.vm(args.vmid)


def premigrate(ctx, args, stdin_xml=None):
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host != args.dst_host:
        moves.copy_dir(ctx, HostPath(args.src_host, args.vm_dir),
                       HostPath(args.dst_host, args.vm_dir))
    for disk in _our_disks(ctx, vm):
        volume = volumes.of_disk(ctx, vm, disk.disk_id)
        attachment.attach(ctx, args.dst_host, volume, f"{args.vm_dir}/disk.{disk.disk_id}")
    _migrate_other(args, "premigrate", vm, stdin_xml)


def postmigrate(ctx, args, stdin_xml=None):
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host != args.dst_host:
        for disk in _our_disks(ctx, vm):
            volume = volumes.of_disk(ctx, vm, disk.disk_id)
            attachment.detach(ctx, args.src_host, volume, f"{args.vm_dir}/disk.{disk.disk_id}")
        moves.remove_dir(ctx, args.src_host, args.vm_dir)
    _migrate_other(args, "postmigrate", vm, stdin_xml)


def failmigrate(ctx, args, stdin_xml=None):
    vm = _vm(ctx, args, stdin_xml)
    if args.src_host != args.dst_host:
        for disk in _our_disks(ctx, vm):
            volume = volumes.of_disk(ctx, vm, disk.disk_id)
            attachment.detach(ctx, args.dst_host, volume, f"{args.vm_dir}/disk.{disk.disk_id}")
        moves.remove_dir(ctx, args.dst_host, args.vm_dir)
    _migrate_other(args, "failmigrate", vm, stdin_xml)


def _migrate_other(args, action, vm, stdin_xml):
    """oned calls the migrate hooks of the system datastore's TM only; each other TM of the VM's
    disks is called here with the same argv plus our name (so it does not fan out again)."""
    if args.caller_tm:
        return
    others = sorted({d.tm_mad for d in vm.disks if d.tm_mad and d.tm_mad != OUR_TM})
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    for tm in others:
        script = os.path.join(os.path.dirname(here), tm, action)
        if not os.access(script, os.X_OK):
            log.info(f"no {action} for TM {tm} at {script}; skipped")
            continue
        argv = [script, args.src_host, args.dst_host, args.vm_dir, str(args.vmid),
                str(args.dsid), OUR_TM]
        result = subprocess.run(argv, input=(stdin_xml or "").encode(), capture_output=True)
        if result.returncode != 0:
            raise DriverError(f"{tm} {action} failed: "
                              f"{result.stderr.decode(errors='replace').strip()}")
