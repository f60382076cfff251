"""Backups of a VM's disks as oned 7.4 (and 6.10) drives them (fixtures 27-29):

    prebackup[_live]   the VM's `backup/` directory on its host holds vm.xml and one qcow2
                       `disk.<id>.<N>` per disk: the whole disk (FULL, or N = 0 of a chain) or the
                       blocks changed since point N-1 (BACKUP_CONFIG/MODE=INCREMENT), which the
                       backup datastore's driver (rsync, restic) then copies away;
    postbackup[_live]  that directory goes.

The consistent point: write-back layers flushed and kept clean (every write the guest saw
complete is on the storage node), the guest frozen if BACKUP_CONFIG/FS_FREEZE asks, a thin
snapshot of each disk on the storage node (the point), the guest thawed and caching again;
only then are the points read, over iSCSI, while the VM runs on. An increment's blocks come from
the thin pool's metadata (thin_delta between the previous point and this one), never from
reading and comparing the disk.

A chain's previous point is kept until the next backup of the chain is written (so a backup
that failed, here or in the backup datastore, is run again from it); a FULL backup keeps no
point; a reset (LAST_INCREMENT_ID=-1) starts a new chain and drops the old points."""
import base64
import os

from .. import log, protocol, volumes
from ..errors import DriverError
from ..one.errors import OneError
from ..one.objects import VirtualMachine

BACKUP_DIR = "backup"


class Plan:
    """What one backup of the VM does: its mode, this point's number, the previous one's."""

    def __init__(self, vm):
        mode = (vm.text("BACKUPS/BACKUP_CONFIG/MODE") or "FULL").strip().upper()
        if mode not in ("FULL", "INCREMENT"):
            raise DriverError(f"VM {vm.id}: BACKUP_CONFIG/MODE={mode[:20]!r} is not FULL or "
                              "INCREMENT")
        self.incremental = mode == "INCREMENT"
        last = vm.integer("BACKUPS/BACKUP_CONFIG/LAST_INCREMENT_ID") if self.incremental else None
        if last is not None and last < -1:
            raise DriverError(f"VM {vm.id}: BACKUP_CONFIG/LAST_INCREMENT_ID={last} is not -1 "
                              "or an increment")
        if not self.incremental or last is None or last == -1:
            self.increment, self.since = 0, None
        else:
            self.increment, self.since = last + 1, last
        freeze = (vm.text("BACKUPS/BACKUP_CONFIG/FS_FREEZE") or "NONE").strip().upper()
        if freeze not in protocol.FREEZE_MODES:
            raise DriverError(f"VM {vm.id}: BACKUP_CONFIG/FS_FREEZE={freeze[:20]!r} is not one "
                              f"of {', '.join(protocol.FREEZE_MODES)}")
        self.freeze = freeze

    def keep(self, succeeded):
        """The points each disk keeps after this backup."""
        if not self.incremental:
            return []
        if succeeded:
            return sorted({self.increment, *([self.since] if self.since is not None else [])})
        return [self.since] if self.since is not None else []


def _document(args, stdin_text):
    """The VM document oned sent on stdin (plain XML), checked to be this VM's."""
    if not stdin_text or not stdin_text.strip():
        raise DriverError(f"{args.action}: oned sends the VM's XML on stdin; none was given")
    vm = VirtualMachine.from_xml(stdin_text)
    if vm.integer("ID") != args.vmid:
        raise DriverError(f"the VM document on stdin is VM {vm.text('ID')}, not VM {args.vmid} "
                          "of the arguments")
    return vm


def _disks(ctx, vm, args):
    out = []
    for disk_id in args.disk_ids:
        try:
            vm.disk(disk_id)
        except (OneError, DriverError):
            raise DriverError(f"VM {vm.id} has no disk {disk_id} to back up")
        volume = volumes.of_disk(ctx, vm, disk_id)
        mode, _ = volumes.cache_plan(vm, disk_id, volume)
        out.append((disk_id, volume, mode))
    return out


def _backup_dir(args):
    return os.path.join(os.path.normpath(args.vm_dir.path), BACKUP_DIR)


def prebackup(ctx, args, stdin_xml=None):
    vm = _document(args, stdin_xml)
    plan = Plan(vm)
    host = args.vm_dir.host
    disks = _disks(ctx, vm, args)
    if os.environ.get("BACKUP_BASE_PATH"):
        raise DriverError("BACKUP_BASE_PATH is set: tm_iscsi writes backups into the VM's own "
                          "directory only; unset it for this datastore's driver")
    if len({v.ds.chap_user for _, v, _ in disks}) > 1:
        raise DriverError(f"VM {vm.id}'s disks are in datastores with different CHAP users; "
                          "one backup reads them all through one login each")
    stacks = [v.lv for _, v, mode in disks if protocol.has_writeback(mode)]
    live = args.is_live
    freeze = plan.freeze if live else "NONE"
    log.info(f"backup of VM {vm.id} disks {', '.join(str(d) for d, _, _ in disks)}: "
             f"{'increment ' + str(plan.increment) if plan.since is not None else 'full'}"
             f"{', live' if live else ''}")
    quiesced = False
    if stacks or freeze != "NONE":
        ctx.node(host).call(protocol.BACKUP_QUIESCE, "--request", protocol.encode(
            protocol.BackupQuiesce(stacks=stacks, domain=args.deploy_id, freeze=freeze,
                                   flush_seconds=max(1, ctx.settings.copy_timeout - 60))),
                            timeout=ctx.settings.copy_timeout)
        quiesced = True
    try:
        points = _snapshot(ctx, host, disks, plan, vm.id)
        written = _write(ctx, host, args, vm, stdin_xml, disks, stacks, freeze, points)
    except BaseException:
        if quiesced:
            # Either call may have failed before the host let the VM go on.
            _write(ctx, host, args, vm, stdin_xml, disks, stacks, freeze, None,
                   best_effort=True)
        # The storage node may have made and exported this backup's points before the answer
        # was lost.
        _release(ctx, host, disks, plan.keep(False), best_effort=True)
        raise
    _release(ctx, host, disks, plan.keep(True))
    for item in written:
        log.info(f"{host}:{_backup_dir(args)}/{item['file']}: {item['file_bytes']} bytes "
                 f"({item['bytes_read']} read from the storage node)")


def _groups(disks):
    groups = {}
    for disk in disks:
        groups.setdefault(disk[1].ds.ds_id, []).append(disk)
    return list(groups.values())


def _snapshot(ctx, host, disks, plan, vm_id):
    """{disk id: the point backup-snapshot made}, one call per storage node."""
    initiator = ctx.initiator(host)
    out = {}
    for group in _groups(disks):
        ds = group[0][1].ds
        request = protocol.BackupSnapshot(
            vg=ds.vg, host=host, initiator=initiator, pool=ds.pool, iqn_base=ds.iqn_base,
            chap_user=ds.chap_user, max_fill=ds.max_fill, ds_id=ds.ds_id, vm_id=vm_id,
            disks=[protocol.BackupPoint(lv=v.lv, increment=plan.increment, since=plan.since)
                   for _, v, _ in group])
        answer = ctx.node(ds.storage_host).call(
            protocol.BACKUP_SNAPSHOT, "--request", protocol.encode(request),
            stdin=ds.chap_stdin(), timeout=ctx.settings.transaction_timeout)
        got = answer.get("disks", [])
        if len(got) != len(group):
            raise DriverError(f"{ds.storage_host}: backup-snapshot answered {len(got)} of "
                              f"{len(group)} disks")
        for (disk_id, _, _), point in zip(group, got):
            out[disk_id] = point
    return out


def _write(ctx, host, args, vm, stdin_xml, disks, stacks, freeze, points, best_effort=False):
    """backup-write: the VM goes on, then (with `points`) the files are written."""
    ds = disks[0][1].ds
    files = []
    ranges = {}
    for disk_id, volume, _ in disks if points else ():
        point = points[disk_id]
        if point.get("ranges") is not None:
            ranges[disk_id] = point["ranges"]
        files.append(protocol.BackupFile(
            disk_id=disk_id, increment=point["increment"], size_bytes=point["size_bytes"],
            lun=protocol.Lun(**point["lun"]), delta=point.get("ranges") is not None,
            portal=None if volume.ds.portal == ds.portal else volume.ds.portal))
    request = protocol.BackupWrite(portal=ds.portal, dir=_backup_dir(args), files=files,
                                   resume=stacks, domain=args.deploy_id, thaw=freeze,
                                   chap_user=ds.chap_user)
    payload = protocol.backup_payload(base64.b64encode(stdin_xml.encode()).decode(), ranges)
    stdin = (ds.chap_stdin() or "").encode() + payload
    try:
        answer = ctx.node(host).call(protocol.BACKUP_WRITE, "--request",
                                     protocol.encode(request), stdin=stdin,
                                     timeout=ctx.settings.copy_timeout)
    except DriverError as err:
        if best_effort:
            log.info(f"{host}: could not let VM {vm.id} go on after the failure: {err}")
            return []
        raise
    return answer.get("files", [])


def _release(ctx, host, disks, keep, best_effort=False):
    for group in _groups(disks):
        ds = group[0][1].ds
        request = protocol.BackupRelease(
            vg=ds.vg, host=host, iqn_base=ds.iqn_base,
            disks=[protocol.BackupKeep(lv=v.lv, keep=keep) for _, v, _ in group])
        try:
            ctx.node(ds.storage_host).call(protocol.BACKUP_RELEASE, "--request",
                                           protocol.encode(request),
                                           timeout=ctx.settings.transaction_timeout)
        except DriverError as err:
            if not best_effort:
                raise
            log.info(f"{ds.storage_host}: the backup points stay exported: {err}")


def postbackup(ctx, args, stdin_xml=None):
    """What the backup datastore copied goes (the points were released by prebackup)."""
    _document(args, stdin_xml)
    ctx.node(args.vm_dir.host).call("path-remove", "--path", _backup_dir(args))

