"""Write-back checkpoints and declaring a host lost, from the front-end.

A checkpoint of a running VM's write-back disks (tm_iscsi.protocol, "write-back checkpoints")
is four node calls: drain on the host, take on each storage node, resume on the host, commit on
each storage node. `due()` picks the VMs whose last checkpoint is older than their system
datastore's WRITEBACK_CHECKPOINT (what the front-end's timer runs every minute); `host_lost()`
gives each disk a lost host held write-back data of its last checkpoint, once the host is fenced.
"""
import secrets
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .. import log, naming, protocol, volumes
from ..errors import DriverError
from ..one.errors import OneError
from ..one.states import LcmState, VmState
from ..protocol import CKPT_HOST_TAG, tag_value
from .views import Host

# A host in one of these states is not running its VMs as far as oned knows.
LOST_STATES = ("ERROR", "DISABLED", "OFFLINE", "MONITORING_ERROR")
HOLD_SECONDS = 30


@dataclass
class WritebackDisk:
    disk_id: int
    volume: object                   # tm_iscsi.volumes.Volume


@dataclass
class VmDisks:
    vm: object                       # tm_iscsi.one.objects.VirtualMachine
    host: str
    system_ds: int
    disks: List[WritebackDisk] = field(default_factory=list)

    def groups(self):
        """{(storage node, VG): [WritebackDisk]}: one take and one commit call each."""
        out = {}
        for disk in self.disks:
            ds = disk.volume.ds
            out.setdefault((ds.storage_host, ds.vg), []).append(disk)
        return out


def writeback_disks(cloud, vm):
    """The VM's disks that have a write-back layer on its host, or None when the VM is not
    running on a host of an iscsi_lvm system datastore."""
    if vm.state != VmState.ACTIVE or vm.lcm_state != LcmState.RUNNING:
        return None
    try:
        history = vm.current_history
        host, system_ds = history.hostname, history.ds_id
        cloud.datastore(system_ds)
    except (DriverError, OneError):
        return None
    found = VmDisks(vm, host, system_ds)
    for disk_id, volume in cloud.volumes_of(vm):
        mode, _ = volumes.cache_plan(vm, disk_id, volume)
        if protocol.has_writeback(mode):
            found.disks.append(WritebackDisk(disk_id, volume))
    return found


def checkpoints(cloud, groups):
    """{(storage node, VG, lv): (host the checkpoint bounds, cut_at)} of the disks' checkpoints,
    one `lv-list` per storage node and VG."""
    out = {}
    for storage, vg in sorted(groups):
        rows = cloud.node(storage).call(
            "lv-list", "--vg", vg,
            "--tag", protocol.owner_tag("kind", protocol.CHECKPOINT_KIND)).get("lvs", [])
        for row in rows:
            disk = naming.checkpoint_of(row.get("lv", ""))
            if disk is not None:
                out[(storage, vg, disk)] = (tag_value(row.get("tags"), CKPT_HOST_TAG),
                                            protocol.checkpoint_cut_at(row.get("tags")))
    return out


def last_checkpoint_at(vm_disks, known):
    """When the VM's oldest disk checkpoint for its current host was cut (None: a disk has
    none)."""
    times = []
    for disk in vm_disks.disks:
        ds = disk.volume.ds
        host, at = known.get((ds.storage_host, ds.vg, disk.volume.lv), (None, None))
        if host != vm_disks.host or at is None:
            return None
        times.append(at)
    return min(times) if times else None


def running_writeback_vms(cloud, vm_ids=None):
    out = []
    for vm in cloud.vms():
        if vm_ids is not None and vm.id not in vm_ids:
            continue
        found = writeback_disks(cloud, vm)
        if found is not None and found.disks:
            out.append(found)
    return out


def due(cloud, now=None):
    """The running VMs whose write-back disks' last checkpoint is older than the interval of
    their system datastore (WRITEBACK_CHECKPOINT; 0: never), oldest first."""
    now = time.time() if now is None else now
    candidates = []
    for found in running_writeback_vms(cloud):
        minutes = cloud.datastore(found.system_ds).writeback_checkpoint_min
        if minutes:
            candidates.append((found, minutes))
    groups = {key for found, _ in candidates for key in found.groups()}
    known = checkpoints(cloud, groups)
    picked = []
    for found, minutes in candidates:
        at = last_checkpoint_at(found, known)
        if at is None or now - at >= minutes * 60 - 30:
            picked.append((at or 0, found))
    return [found for _, found in sorted(picked, key=lambda item: (item[0], item[1].vm.id))]


def checkpoint(cloud, found):
    """One checkpoint of a running VM's write-back disks (a VmDisks); its report."""
    started = time.monotonic()
    stacks = [d.volume.lv for d in found.disks]
    token = secrets.token_hex(8)
    hold = len(stacks) > 1
    host = cloud.node(found.host)
    settings = cloud.settings
    resume = ("--request", protocol.encode(protocol.CheckpointResume(stacks=stacks, token=token)))
    try:
        drained = host.call(protocol.CHECKPOINT_DRAIN, "--request", protocol.encode(
            protocol.CheckpointDrain(stacks=stacks, token=token, hold=hold,
                                     hold_seconds=HOLD_SECONDS,
                                     flush_seconds=max(1, settings.copy_timeout - 60))),
            timeout=settings.copy_timeout)
    except DriverError:
        # Stacks drained before the failure are clean and would stay in writethrough.
        try:
            host.call(protocol.CHECKPOINT_RESUME, *resume, timeout=settings.transaction_timeout)
        except DriverError as err:
            log.info(f"{found.host}: could not put VM {found.vm.id}'s disks back into "
                     f"write-back: {err}")
        raise
    taken, failure = {}, None
    cut_started = time.monotonic()
    storage_seconds = 0.0
    try:
        for (storage, vg), disks in sorted(found.groups().items()):
            answer = cloud.node(storage).call(protocol.CHECKPOINT_TAKE, "--request",
                                              protocol.encode(protocol.CheckpointTake(
                                                  vg=vg, host=found.host,
                                                  lvs=[d.volume.lv for d in disks],
                                                  max_fill=disks[0].volume.ds.max_fill)),
                                              timeout=HOLD_SECONDS if hold else
                                              settings.transaction_timeout)
            taken[(storage, vg)] = answer
        storage_seconds += time.monotonic() - cut_started
    except DriverError as err:
        failure = err
    finally:
        resumed = host.call(protocol.CHECKPOINT_RESUME, *resume,
                            timeout=settings.transaction_timeout)
    held_seconds = time.monotonic() - cut_started
    valid = failure is None and resumed.get("valid") is True and (
        not hold or all(s.get("held") for s in resumed.get("stacks", [])))
    commit_started = time.monotonic()
    for (storage, vg), disks in sorted(found.groups().items()):
        cloud.node(storage).call(
            protocol.CHECKPOINT_COMMIT, "--request", protocol.encode(protocol.CheckpointCommit(
                vg=vg, host=found.host, lvs=[d.volume.lv for d in disks], valid=valid)),
            timeout=settings.transaction_timeout)
    storage_seconds += time.monotonic() - commit_started
    if failure is not None:
        raise failure
    if not valid:
        raise DriverError(f"VM {found.vm.id}: the checkpoint was not cut at one clean instant "
                          "(another action changed its disks' caches meanwhile); the previous "
                          "checkpoint is kept: run it again")
    drained_bytes = {s["name"]: s["dirty_before_blocks"] * (s.get("block_bytes") or 0)
                     for s in drained.get("stacks", [])}
    cut = {d["lv"]: d for answer in taken.values() for d in answer.get("disks", [])}
    return {
        "vm": found.vm.id, "host": found.host, "held": hold,
        "stall_seconds": round(held_seconds, 3) if hold else max(
            (d.get("seconds", 0.0) for d in cut.values()), default=0.0),
        "seconds": round(time.monotonic() - started, 3),
        "storage_seconds": round(storage_seconds, 3),
        "disks": [{"disk_id": d.disk_id, "lv": d.volume.lv,
                   "drained_mib": round(drained_bytes.get(d.volume.lv, 0) / (1 << 20), 1),
                   "cut_at": cut.get(d.volume.lv, {}).get("cut_at")} for d in found.disks],
    }


# -- declaring a host lost ----------------------------------------------------------------------

@dataclass
class LostReport:
    host: str
    disks: List[Dict] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)

    @property
    def ok(self):
        return not self.errors and all(d.get("recovered") for d in self.disks)


def fenced_on(cloud, initiator) -> Tuple[List[str], Dict[str, str]]:
    """The storage nodes on which `initiator` still has an ACL (live or saved), and those that
    could not be asked."""
    open_on, errors = [], {}
    for storage in cloud.storage_hosts():
        try:
            answer = cloud.node(storage).call("exports")
        except DriverError as err:
            errors[storage] = str(err)
            continue
        live = any(initiator in (t.get("initiators") or []) for t in answer.get("targets", []))
        saved = any(initiator in (names or []) for names in
                    ((answer.get("saved") or {}).get("targets") or {}).values())
        if live or saved:
            open_on.append(storage)
    return open_on, errors


def check_lost(cloud, host, force=False):
    """Refuse (DriverError) unless the host is fenced and oned does not run it, or `force`."""
    if force:
        return
    state = Host.from_element(cloud.one.host_info(host.id)).state
    if state not in LOST_STATES:
        raise DriverError(f"host {host.name} is {state} in OpenNebula, not ERROR or DISABLED: "
                          "not declaring a host lost that may still run its VMs (--force to do it "
                          "anyway)")
    if not host.initiator:
        raise DriverError(f"host {host.name} has no recorded ISCSI_INITIATOR, so its fencing "
                          f"cannot be checked: run tm-iscsi-hook fence --host {host.name} first "
                          "(or --force)")
    open_on, errors = fenced_on(cloud, host.initiator)
    if errors:
        storage, error = sorted(errors.items())[0]
        raise DriverError(f"cannot check that {host.name} is fenced on {storage}: {error}")
    if open_on:
        raise DriverError(f"host {host.name} is not fenced: its initiator {host.initiator} still "
                          f"has ACLs on {', '.join(open_on)}; run tm-iscsi-hook fence --host "
                          f"{host.name} first")


def host_lost(cloud, host, force=False, without_checkpoint=False):
    """Every storage node: each disk `host` held write-back data of back to its checkpoint (or
    kept as it is with `without_checkpoint`), its guard cleared; a LostReport."""
    check_lost(cloud, host, force)
    report = LostReport(host.name)
    for group in cloud.storage_groups():
        try:
            answer = cloud.node(group.host).call(
                protocol.HOST_LOST, "--request", protocol.encode(protocol.HostLost(
                    vg=group.vg, host=host.name, iqn_bases=list(group.iqn_bases),
                    without_checkpoint=without_checkpoint)),
                timeout=cloud.settings.transaction_timeout)
        except DriverError as err:
            report.errors[f"{group.host}:{group.vg}"] = str(err)
            continue
        for disk in answer.get("disks", []):
            report.disks.append(dict(disk, storage=group.host, vg=group.vg))
    for disk in report.disks:
        if disk.get("recovered"):
            log.info(f"{disk['vg']}/{disk['lv']}: {recovery_text(disk)}")
    return report


def recovery_text(disk):
    """What host-lost did to one disk (a row of its report), as a person reads it."""
    if not disk.get("recovered"):
        return f"NOT recovered: {disk.get('reason')}"
    if disk.get("checkpoint"):
        return f"back to its checkpoint of {disk.get('age_seconds')} s ago"
    return "kept as it was (no checkpoint)"


def age_text(seconds: Optional[float]):
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
