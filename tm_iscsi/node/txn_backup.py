"""The storage node's half of a backup (tm_iscsi.protocol, "backups"): `backup-snapshot` makes
each disk's point, lists the blocks changed since the previous one and exports the point to the
host; `backup-release` unexports the points and removes those the chain no longer needs.

A point is made anew on every run, also when one of that number exists (a run that failed after
making it): a backup holds what the disk holds when it is taken, never an older state. The
previous point is never touched by backup-snapshot, so a backup that failed anywhere can be run
again from the same previous point."""
from .. import naming, protocol
from . import confine, lio, locks, lvm, lvops, thindelta
from . import run as _run
from .chap import credentials_from_stdin
from .cli import checked_command as command, each_request
from .cli import request_option as _request_option
from .errors import NodeError
from .txn_storage import _check_common, _need, check_export_fields


def _check_snapshot(req):
    check_export_fields(req)
    for disk in req.disks:
        # A VM's disk or an image, never one of tm_iscsi's snapshots, bases or maps.
        _need(naming.is_source_lv(disk.lv), "LV to back up", disk.lv)


def _point_tags(req, lv):
    """A point is the backed-up VM's (so `tm-iscsi orphans` finds the points of a persistent
    image whose VM is gone), of the origin's disk and image."""
    owner = dict(kind="backup", ds=req.ds_id)
    for tag in lvops.owner_tags(lv.tags):
        key, _, value = tag[len(protocol.OWNER_TAG) + 1:].partition("=")
        if key in ("vm", "disk", "image"):
            owner[key] = value
    if req.vm_id is not None:
        owner["vm"] = req.vm_id
    return protocol.owner_tags(**owner)


def _unexport_points(req, names, changed):
    for name in names:
        iqn = naming.target_iqn(req.vg, name, req.iqn_base)
        changed.add(iqn, naming.backstore_name(req.vg, name))
        lio.unexport(iqn, naming.backstore_name(req.vg, name))


@command(protocol.BACKUP_SNAPSHOT, "make each disk's backup point, list what changed, export it")
def backup_snapshot(args):
    return each_request(protocol.BackupSnapshot, args.request, _check_snapshot, _snapshot)


def _snapshot(req):
    chap = credentials_from_stdin(req.chap_user)
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        lvops.require_pool(rep, req.pool)
        for disk in req.disks:
            lv = lvops.require_lv(rep, disk.lv, "back up")
            if not lv.is_thin:
                raise NodeError(f"{req.vg}/{disk.lv} is not a thin LV; backups need thin "
                                "snapshots")
            if disk.since is not None and naming.backup_lv(disk.lv, disk.since) not in rep.lvs:
                raise NodeError(
                    f"the point of the previous backup of {req.vg}/{disk.lv} "
                    f"({naming.backup_lv(disk.lv, disk.since)}) is gone, so no increment can be "
                    "made against it: start a new chain (onevm backup --reset)")
        lvops.check_fill(rep, req.pool, req.max_fill)
        stale = [naming.backup_lv(d.lv, d.increment) for d in req.disks
                 if naming.backup_lv(d.lv, d.increment) in rep.lvs]
        if stale:
            with lio.config_lock():
                changed = lio.Changed()
                _unexport_points(req, stale, changed)
                lio.save_config(changed=changed)
            for name in stale:
                _run.info(f"{req.vg}/{name} is left from an earlier run: making it anew")
                lvops.remove(rep, name)
            rep = lvm.report(req.vg)
        for disk in req.disks:
            lvops.ensure_snapshot(rep, disk.lv, naming.backup_lv(disk.lv, disk.increment),
                                  _point_tags(req, rep.get(disk.lv)), req.max_fill)
        rep = lvm.report(req.vg)
        sizes = {d.lv: rep.get(d.lv).size_bytes for d in req.disks}
    out = []
    for disk in req.disks:
        point = naming.backup_lv(disk.lv, disk.increment)
        ranges = None
        if disk.since is not None:
            ranges = thindelta.changed_ranges(req.vg, req.pool,
                                              naming.backup_lv(disk.lv, disk.since), point,
                                              sizes[disk.lv])
        out.append({"lv": disk.lv, "point": point, "increment": disk.increment,
                    "size_bytes": sizes[disk.lv], "ranges": ranges,
                    "changed_bytes": None if ranges is None else sum(n for _, n in ranges),
                    "lun": {"iqn": naming.target_iqn(req.vg, point, req.iqn_base),
                            "serial": naming.lun_serial(req.vg, point)}})
    with lio.config_lock():
        changed = lio.Changed()
        for disk in out:
            iqn = disk["lun"]["iqn"]
            changed.add(iqn, naming.backstore_name(req.vg, disk["point"]))
            lio.export(iqn, naming.backstore_name(req.vg, disk["point"]),
                       lvm.lv_path(req.vg, disk["point"]), disk["lun"]["serial"],
                       req.initiator, portal_ip=req.portal_ip, port=req.port, chap=chap,
                       readonly=True)
        lio.save_config(changed=changed)
    return {"vg": req.vg, "disks": out}


backup_snapshot.configure = _request_option


@command(protocol.BACKUP_RELEASE, "unexport the backup points; remove those no chain needs")
def backup_release(args):
    return each_request(protocol.BackupRelease, args.request, _check_release, _release)


def _check_release(req):
    _check_common(req)
    for disk in req.disks:
        _need(naming.is_source_lv(disk.lv), "LV of backup points", disk.lv)


def _release(req):
    out = []
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        points = {d.lv: naming.backup_points(d.lv, rep.lvs) for d in req.disks}
        for names in points.values():
            for name in names.values():
                confine.require_owned(rep.get(name), "release")
        with lio.config_lock():
            changed = lio.Changed()
            _unexport_points(req, [n for names in points.values() for n in names.values()],
                             changed)
            lio.save_config(changed=changed)
        for disk in req.disks:
            removed = []
            for increment, name in sorted(points[disk.lv].items()):
                if increment not in disk.keep:
                    lvops.remove(rep, name)
                    removed.append(name)
            out.append({"lv": disk.lv, "removed": removed,
                        "kept": sorted(n for i, n in points[disk.lv].items()
                                       if i in disk.keep)})
    return {"vg": req.vg, "disks": out}


backup_release.configure = _request_option
