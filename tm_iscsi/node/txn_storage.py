"""The storage node's two transactions (tm_iscsi.protocol): `storage-attach` brings every disk of
an action to the storage state a host needs and exports its LUNs; `storage-release` takes that
back. One call each, under the VG's lock and then LIO's (locks.py gives the order), reading
LVM's state once and again only after changing it; the saved LIO config is written once.

Each is idempotent as a whole: it starts from what is there, so a re-run after a failure (or a
kill) at any point converges. Every refusal comes before the first change."""
import argparse
import ipaddress
import secrets as _secrets

from .. import naming, protocol
from ..protocol import (BASE_GEN_TAG, RETIRED_TAG, STALE_MAP_TAG, SYNC_IMAGE_TAG,
                        SYNC_PENDING_TAG, WB_HOST_TAG, has_read, has_writeback, tag_value,
                        without_read)
from . import confine, iscsi, lio, locks, lvm, lvops
from . import run as _run
from .chap import credentials_from_stdin
from .cli import checked_command as command, each_request
from .cli import request_option as _request_option
from .errors import NodeError, NodeUsageError

MIB = 1024 * 1024
# dm-clone keeps one bit per 64 KiB region plus a superblock and space maps.
MAP_MIB_MIN = 8


def map_size_mib(disk_bytes):
    return MAP_MIB_MIN + int(disk_bytes or 0) // (16384 * MIB)


def _need(ok, what, value):
    if not ok:
        raise NodeUsageError(f"{what} {str(value)[:80]!r} is not valid")


def check_vg_host(req):
    """The VG is one this storage node serves; the host is a host name."""
    try:
        confine.storage_vg(req.vg)
    except argparse.ArgumentTypeError as err:
        raise NodeUsageError(str(err))
    _need(naming.valid_host(req.host), "host", req.host)


def check_iqn_base(value):
    _need(protocol.valid_iqn_base(value), "iqn_base", value)


def _check_common(req):
    check_vg_host(req)
    if getattr(req, "ds_id", None) is not None:
        _need(0 <= req.ds_id < 1 << 31, "ds_id", req.ds_id)
    if req.initiator is not None:
        _need(iscsi.valid_iqn(req.initiator), "initiator", req.initiator)
    check_iqn_base(req.iqn_base)
    for disk in req.disks:
        _need(naming.is_scheme_lv(disk.lv), "LV name", disk.lv)


def check_export_fields(req):
    """What a request that exports LUNs gives: the pool, the portal address, the CHAP user."""
    _check_common(req)
    _need(naming.valid_name(req.pool), "pool", req.pool)
    try:
        ipaddress.ip_address(req.portal_ip)
    except ValueError:
        raise NodeUsageError(f"portal_ip {req.portal_ip[:60]!r} is not an IP address")
    if req.chap_user is not None:
        _need(naming.valid_chap_user(req.chap_user), "CHAP user", req.chap_user)


def _check_attach(req):
    check_export_fields(req)
    for disk in req.disks:
        for name in (disk.image_lv, (disk.create or {}).get("origin")):
            if name is not None:
                _need(naming.is_scheme_lv(name), "LV name", name)
        for host in (disk.wb_host, disk.wb_from):
            if host is not None:
                _need(naming.valid_host(host), "host", host)
        create = disk.create or {}
        if create.get("fs") is not None and create["fs"] not in lvops.FILESYSTEMS:
            raise NodeUsageError(f"fs {create['fs'][:40]!r} is not one of "
                                 f"{', '.join(lvops.FILESYSTEMS)}")
        if create.get("size_mib") is not None and not 1 <= create["size_mib"] <= 1 << 30:
            raise NodeUsageError(f"size_mib {create['size_mib']} is out of range")
        owner = (disk.create or {}).get("owner") or {}
        _need(isinstance(owner, dict) and set(owner) <= set(protocol.OWNER_KEYS), "owner",
              owner)
        for key, value in owner.items():
            if key == "kind":
                _need(value in protocol.VOLUME_KINDS, "owner kind", value)
            else:
                _need(isinstance(value, int) and not isinstance(value, bool) and
                      0 <= value < 1 << 31, f"owner {key}", value)
        for tag in _owner(req, disk, "clone"):
            _need(lvm.valid_tag(tag), "owner tag", tag)


def _owner(req, disk, default_kind):
    owner = dict((disk.create or {}).get("owner") or {})
    owner.setdefault("kind", default_kind)
    if req.ds_id is not None:
        owner["ds"] = req.ds_id
    return protocol.owner_tags(**owner)


def _vm_disk_of(lv):
    """(vm, disk) of vm-V-disk-D, for the owner tags of its map."""
    parts = lv.split("-")
    if len(parts) >= 4 and parts[0] == "vm" and parts[2] == "disk":
        return parts[1], parts[3]
    return None, None


# -- storage-attach ---------------------------------------------------------------------------

class _Disk:
    """What the transaction decided for one disk: its mode, its LUNs and its base key."""

    def __init__(self, want):
        self.want = want
        self.mode = "none" if want.readonly else want.mode
        self.gen = None
        self.created = False
        self.size_bytes = None
        self.add_tags = []
        self.delete_tags = []
        self.created_names = set()
        self.wb_epoch = None


def _refuse_before_changes(rep, req, disk):
    lv = rep.get(disk.want.lv)
    create = disk.want.create
    if lv is None and not create:
        raise NodeError(f"logical volume {req.vg}/{disk.want.lv} does not exist on this storage "
                        "node")
    if lv is None and create and create.get("origin") and rep.get(create["origin"]) is None:
        raise NodeError(f"logical volume {req.vg}/{create['origin']} (the image) does not exist "
                        "on this storage node")
    if lv is not None:
        confine.require_owned(lv, "export")
        owner = tag_value(lv.tags, WB_HOST_TAG)
        if owner and owner not in (req.host, disk.want.wb_host, disk.want.wb_from):
            raise NodeError(f"{req.vg}/{disk.want.lv} has unflushed write-back data on {owner}; "
                            f"boot {owner} (its activation flushes it) before using the disk on "
                            f"{req.host}")


def _unexport_all(vg, name, iqn_base):
    lio.unexport(naming.target_iqn(vg, name, iqn_base), naming.backstore_name(vg, name), None)


def _remove_unexported(rep, name, iqn_base):
    """Drop every export of the LV, then the LV."""
    if rep.get(name) is None:
        return False
    with lio.config_lock():
        _unexport_all(rep.name, name, iqn_base)
    return lvops.remove(rep, name)


def _ensure_base(rep, req, disk):
    """The image's base and its generation (made now if missing), under the VG lock, so that
    concurrent first clones of one image agree on one generation. Returns (gen, base size), or
    (None, 0) after turning the read layer off (a retired base)."""
    want = disk.want
    base_name = protocol.base_lv(want.image_lv)
    base = rep.get(base_name)
    if base is not None and RETIRED_TAG in base.tags:
        _run.info(f"{req.vg}/{base_name} is retired (the image was written); no read cache")
        disk.mode = without_read(disk.mode)
        return None, 0
    if base is None:
        gen = _secrets.token_hex(4)
        image_id = want.image_lv.split("-", 1)[1] if want.image_lv.startswith("img-") else None
        owner = protocol.owner_tags(kind="base", image=image_id, ds=req.ds_id)
        lvops.ensure_snapshot(rep, want.image_lv, base_name, owner + [BASE_GEN_TAG + gen],
                              req.max_fill)
        disk.created_names.add(base_name)
        return gen, rep.get(want.image_lv).size_bytes
    gen = tag_value(base.tags, BASE_GEN_TAG)
    if gen is None:
        gen = _secrets.token_hex(4)
        lvm.change_tags(req.vg, base_name, [BASE_GEN_TAG + gen], [])
    return gen, base.size_bytes


def _ensure_map(rep, req, disk, gen, base_bytes, clone_tags):
    """The clone's region map, made against base generation `gen`; sets disk.gen, or turns the
    read layer off when the map cannot be trusted."""
    want = disk.want
    map_name = protocol.map_lv(want.lv)
    mapped = rep.get(map_name)
    if mapped is not None and (want.map == "forget" or
                               tag_value(mapped.tags, BASE_GEN_TAG) != gen):
        _remove_unexported(rep, map_name, req.iqn_base)
        mapped = None
    if want.map == "forget":
        disk.mode = without_read(disk.mode)
        return
    clone_gen = tag_value(clone_tags, BASE_GEN_TAG)
    if mapped is None:
        # An empty map says "nothing written yet": true only of a clone the clone action makes
        # of this base's image (now, or in an earlier attempt that tagged it with this base).
        # A clone that was reverted, resized or written without its map keeps no read layer.
        if not (want.create and clone_gen == gen):
            disk.mode = without_read(disk.mode)
            return
        vm, disk_id = _vm_disk_of(want.lv)
        owner = protocol.owner_tags(kind="map", vm=vm, disk=disk_id, ds=req.ds_id)
        lvops.ensure_thin(rep, req.pool, map_name, map_size_mib(disk.size_bytes),
                          owner + [BASE_GEN_TAG + gen], req.max_fill)
        disk.created_names.add(map_name)
        map_tags = [BASE_GEN_TAG + gen]
    else:
        map_tags = mapped.tags
        if want.map == "stale" and STALE_MAP_TAG not in map_tags:
            lvm.change_tags(req.vg, map_name, [STALE_MAP_TAG], [])
            map_tags = map_tags + [STALE_MAP_TAG]
        elif want.map == "fresh" and STALE_MAP_TAG in map_tags:
            lvm.change_tags(req.vg, map_name, [], [STALE_MAP_TAG])
            map_tags = [t for t in map_tags if t != STALE_MAP_TAG]
    # A disk grown past its image has regions the base cannot serve.
    if clone_gen != gen or STALE_MAP_TAG in map_tags or disk.size_bytes > base_bytes:
        _run.info(f"{req.vg}/{want.lv}: no valid region map; assembling without the read cache")
        disk.mode = without_read(disk.mode)
        return
    disk.gen = gen


def _map_action(rep, vg_req, lv, action):
    """stale / fresh / forget on a clone's region map, when the disk gets no read layer now."""
    map_name = protocol.map_lv(lv)
    mapped = rep.get(map_name)
    if mapped is None or action == "keep":
        return
    if action == "forget":
        _remove_unexported(rep, map_name, vg_req.iqn_base)
    elif action == "stale" and STALE_MAP_TAG not in mapped.tags:
        lvm.change_tags(rep.name, map_name, [STALE_MAP_TAG], [])
    elif action == "fresh" and STALE_MAP_TAG in mapped.tags:
        lvm.change_tags(rep.name, map_name, [], [STALE_MAP_TAG])


def _retire_base(rep, req, image_lv):
    """The image is about to be written: its base stays for the clones that use it but serves no
    new one; a base nobody uses goes."""
    base_name = protocol.base_lv(image_lv)
    base = rep.get(base_name)
    if base is None:
        return
    with lio.config_lock():
        used = lio.users_of_device(base.path, naming.backstore_name(req.vg, base_name))
    if used:
        if RETIRED_TAG not in base.tags:
            lvm.change_tags(req.vg, base_name, [RETIRED_TAG], [])
    else:
        lvops.remove(rep, base_name)


def _bring_lv(rep, req, disk):
    """The disk's LV made (snapshot or new) or found, with its guard and base generation: a new
    LV gets them as it is made (no second LVM change), an existing one by one tag change."""
    want = disk.want
    lv = rep.get(want.lv)
    gen, base_bytes = _ensure_base(rep, req, disk) if has_read(disk.mode) else (None, 0)
    guard = WB_HOST_TAG + (want.wb_host or req.host)
    create = want.create
    if create:
        tags = _owner(req, want, "clone")
        if lv is None:
            tags += [BASE_GEN_TAG + gen] if gen else []
            tags += [guard] if has_writeback(disk.mode) else []
        if create.get("origin"):
            disk.size_bytes, disk.created = lvops.ensure_snapshot(
                rep, create["origin"], want.lv, tags, req.max_fill, create.get("size_mib"))
        else:
            disk.size_bytes, disk.created = lvops.ensure_thin(
                rep, req.pool, want.lv, create["size_mib"], tags, req.max_fill)
    else:
        disk.size_bytes = lv.size_bytes
    if lv is None:
        disk.created_names.add(want.lv)
    clone_tags = tags if lv is None else lv.tags
    disk.wb_epoch = tag_value(clone_tags, protocol.WB_EPOCH_TAG)
    if want.retire_base:
        _retire_base(rep, req, want.lv)
    if has_read(disk.mode):
        _ensure_map(rep, req, disk, gen, base_bytes, clone_tags)
    else:
        _map_action(rep, req, want.lv, want.map)
    if has_writeback(disk.mode) and guard not in clone_tags:
        disk.add_tags.append(guard)
        disk.delete_tags += [t for t in clone_tags if t.startswith(WB_HOST_TAG)]
    if disk.add_tags or disk.delete_tags:
        lvm.change_tags(req.vg, want.lv, disk.add_tags, disk.delete_tags)


def _luns(req, disk):
    """role -> LV name of every LUN the host needs for the disk."""
    names = {"clone": disk.want.lv}
    if has_read(disk.mode):
        names["base"] = protocol.base_lv(disk.want.image_lv)
        names["map"] = protocol.map_lv(disk.want.lv)
    return names


def _export(rep, req, chap, disk, changed):
    luns = {}
    for role, name in _luns(req, disk).items():
        if name in disk.created_names:
            path = lvm.lv_path(req.vg, name)   # made by this call: active, tm_iscsi's
        else:
            lv = lvops.require_lv(rep, name, "export")
            lvops.ensure_active(lv)
            path = lv.path
        iqn = naming.target_iqn(req.vg, name, req.iqn_base)
        if disk.want.export:
            _run.info(f"exporting {path} as {iqn} to {req.initiator}")
            # Also when it was exported already: a re-run after a save that was killed saves it.
            changed.add(iqn, naming.backstore_name(req.vg, name))
            lio.export(iqn, naming.backstore_name(req.vg, name), path,
                       naming.lun_serial(req.vg, name), req.initiator,
                       portal_ip=req.portal_ip, port=req.port, chap=chap,
                       readonly=disk.want.readonly and role == "clone")
        luns[role] = {"iqn": iqn, "serial": naming.lun_serial(req.vg, name)}
    return luns


@command(protocol.STORAGE_ATTACH, "bring an action's disks to their storage state and export them")
def storage_attach(args):
    return each_request(protocol.StorageAttach, args.request, _check_attach, _attach)


def _attach(req):
    chap = credentials_from_stdin(req.chap_user)
    disks = [_Disk(want) for want in req.disks]
    # LVM under the VG's lock (read once, decide, change), then LIO under its own: exports of
    # one action never hold back another action's LVM changes.
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        lvops.require_pool(rep, req.pool)
        for disk in disks:
            _refuse_before_changes(rep, req, disk)
        for disk in disks:
            _bring_lv(rep, req, disk)
    # A filesystem is made outside the VG's lock (it takes seconds and changes no LVM metadata):
    # the LV is this VM's own, and no other action of the VM runs meanwhile.
    for disk in disks:
        fs = (disk.want.create or {}).get("fs")
        if fs and (disk.created or fs != "raw"):
            made = disk.want.lv in disk.created_names
            lv = rep.get(disk.want.lv) if not made else lvm.LV(
                vg=req.vg, name=disk.want.lv, size_bytes=disk.size_bytes, attr="Vwi-a-tz--",
                segtype="thin")
            lvops.ensure_fs(lv, fs)
    with lio.config_lock():
        out = []
        changed = lio.Changed()
        for disk in disks:
            out.append({"lv": disk.want.lv, "mode": disk.mode, "created": disk.created,
                        "size_bytes": disk.size_bytes,
                        "luns": _export(rep, req, chap, disk, changed),
                        "base_key": protocol.base_key(req.vg, disk.want.image_lv, disk.gen)
                        if disk.gen else None, "wb_epoch": disk.wb_epoch})
        if changed:
            lio.save_config(changed=changed)
    return {"vg": req.vg, "disks": out}


storage_attach.configure = _request_option


# -- storage-release --------------------------------------------------------------------------

def _snapshots_of(rep, lv):
    """The LVs that go with `lv`: its snapshots, backup points and checkpoint."""
    return naming.dependents_among(lv, rep.lvs)


def _revoke(req, name, whole_target, changed):
    iqn = naming.target_iqn(req.vg, name, req.iqn_base)
    changed.add(iqn, naming.backstore_name(req.vg, name))
    return lio.unexport(iqn, naming.backstore_name(req.vg, name),
                        None if whole_target else req.initiator)


@command(protocol.STORAGE_RELEASE, "revoke a host's access to an action's disks; remove the VM's own")
def storage_release(args):
    return each_request(protocol.StorageRelease, args.request, _check_release, _release)


def _check_release(req):
    _check_common(req)
    for disk in req.disks:
        if disk.release_base_of is not None:
            _need(naming.is_scheme_lv(disk.release_base_of), "LV name", disk.release_base_of)
        if disk.wb_host is not None:
            _need(naming.valid_host(disk.wb_host), "wb_host", disk.wb_host)


def _release(req):
    out = []
    with locks.lock("vg", req.vg):
        rep = lvm.report(req.vg)
        for disk in req.disks:
            lv = rep.get(disk.lv)
            if lv is not None:
                confine.require_owned(lv, "release")
        with lio.config_lock():
            changed = lio.Changed()
            for disk in req.disks:
                # A host that is gone (no initiator known) loses every ACL of the VM's disks.
                whole = req.initiator is None or disk.remove
                if disk.unexport or disk.remove:
                    _revoke(req, disk.lv, whole, changed)
                    _revoke(req, protocol.map_lv(disk.lv), whole, changed)
                if disk.remove:
                    for snap in _snapshots_of(rep, disk.lv):
                        _revoke(req, snap, True, changed)
                elif disk.map == "forget":
                    _revoke(req, protocol.map_lv(disk.lv), True, changed)
                if disk.release_base_of and req.initiator is not None:
                    _revoke(req, protocol.base_lv(disk.release_base_of), False, changed)
            lio.save_config(changed=changed)
        for disk in req.disks:
            lv = rep.get(disk.lv)
            result = {"lv": disk.lv, "removed": False}
            if disk.remove:
                # The map, the snapshots and the disk in one lvremove (one LVM start and scan
                # under the VG lock every other action of the VG waits for).
                gone = lvops.remove_all(rep, [protocol.map_lv(disk.lv)] + (
                    _snapshots_of(rep, disk.lv) + [disk.lv] if lv is not None else []))
                result["removed"] = disk.lv in gone
            else:
                _map_action(rep, req, disk.lv, disk.map)
            if lv is not None and not disk.remove:
                owner = tag_value(lv.tags, WB_HOST_TAG)
                add, delete = [], []
                if disk.wb_host and owner != disk.wb_host:
                    add = [WB_HOST_TAG + disk.wb_host]
                    delete = [t for t in lv.tags if t.startswith(WB_HOST_TAG)]
                elif disk.wb_clear and owner == req.host:
                    delete = [WB_HOST_TAG + owner]
                if disk.keep and SYNC_PENDING_TAG not in lv.tags and \
                        not any(t.startswith(SYNC_IMAGE_TAG) for t in lv.tags):
                    add.append(SYNC_PENDING_TAG)
                if add or delete:
                    lvm.change_tags(req.vg, disk.lv, add, delete)
                if delete:
                    # Its host's write-back data is written back: a checkpoint of it bounds
                    # nothing any more, and only pins the pool's blocks.
                    for name in naming.checkpoints_among(disk.lv, rep.lvs):
                        lvops.remove(rep, name)
                if disk.keep:
                    result.update(exists=True, size_bytes=lv.size_bytes,
                                  tags=[t for t in lv.tags if t not in delete] + add)
            elif lv is None and disk.keep:
                result["exists"] = False
            out.append(result)
    return {"vg": req.vg, "disks": out}


storage_release.configure = _request_option
