"""Who owns what on the storage nodes and hosts, decided from oned's VMs and images only.

tm_iscsi keeps no state of its own: an LV, a target, an ACL, a session or a disk.N link belongs
to a VM or an image because of its name (naming.py) and its LV tags, and it is in use because a
VM that oned still has is placed where the object is. Everything here is a pure function of
facts gathered elsewhere (`inventory`), so the decisions are unit-tested without any node.

Rules (the conservative side wins: a finding may be removed by `--clean`):
- LV: tagged `tm_iscsi.vm=V` or named `vm-V-disk-D...` -> VM V; tagged `tm_iscsi.image=I` or
  named `img-I...` -> image I; any image's SOURCE and any live VM's disk volume is owned whatever
  its name. An LV with neither mark nor the `tm_iscsi` tag is not ours and is never reported.
- Hosts entitled to an LV's target: the host of each VM whose disks are attached (ACTIVE,
  SUSPENDED, POWEROFF: the last placement; during a migration the one before too) and that uses
  the LV. A region map (`<disk lv>-map`) follows its disk; an image's base LV (the shared read
  caches) may be held by any host.
- A target no host is entitled to, an ACL of an initiator no entitled host has, a host's session
  to a target it is not entitled to, and a disk.N link of a VM that is not attached on that host
  are orphans. Where a fact is missing (a node did not answer, an initiator is unknown), nothing
  is concluded from it.
"""
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .. import naming, protocol
from ..one.states import LcmState, VmState

# Also the order --clean removes them in: a host's cache stack goes while its LUNs' sessions are
# still there (its write-back data is flushed through them).
KINDS = ("link", "stack", "session", "acl", "target", "lv")

ATTACHED_STATES = (VmState.ACTIVE, VmState.SUSPENDED, VmState.POWEROFF)
# LCM states in which the disks may be on the previous host and the new one at once.
MIGRATING = {LcmState.MIGRATE, LcmState.SAVE_MIGRATE, LcmState.PROLOG_MIGRATE,
             LcmState.BOOT_MIGRATE, LcmState.BOOT_MIGRATE_FAILURE,
             LcmState.PROLOG_MIGRATE_FAILURE, LcmState.PROLOG_MIGRATE_POWEROFF,
             LcmState.PROLOG_MIGRATE_POWEROFF_FAILURE, LcmState.PROLOG_MIGRATE_SUSPEND,
             LcmState.PROLOG_MIGRATE_SUSPEND_FAILURE, LcmState.PROLOG_MIGRATE_UNKNOWN,
             LcmState.PROLOG_MIGRATE_UNKNOWN_FAILURE}

_VM_LV = re.compile(r"^vm-(\d+)-disk-(\d+)")
_MAP_LV = re.compile(r"^(vm-\d+-disk-\d+)-map$")
_IMAGE_LV = re.compile(r"^img-(\d+)(?:-|$)")
_BASE_LV = re.compile(r"^img-\d+-base$")
_LINK = re.compile(r"/(\d+)/disk\.\d+$")
# A target's name carries its LV's (target_iqn): what a session to a vanished target was for.
_IQN_VM = re.compile(r"[.:]vm-(\d+)-disk-\d+")
_IQN_IMAGE = re.compile(r"[.:]img-(\d+)(?:-|$)")

ANY_HOST = None   # "every host may hold it" (an image's base, for the read caches)


@dataclass
class Finding:
    kind: str        # one of KINDS
    node: str        # the storage node or host it is on
    name: str        # vg/lv, target IQN, initiator, session target IQN, link path
    reason: str
    vm: Optional[int] = None
    image: Optional[int] = None
    # What removing it takes: vg, lv, iqn_base, initiator, portal, iqn, tagged.
    detail: Dict[str, object] = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


@dataclass
class StorageFacts:
    host: str
    vgs: Dict[str, List[dict]]                # vg -> lv-list rows; a VG that failed is absent
    exports: Optional[List[dict]]             # None: the node did not answer
    iqn_bases: Tuple[str, ...]


@dataclass
class HostFacts:
    name: str
    initiator: Optional[str]
    sessions: Optional[List[dict]]            # None: the host did not answer
    links: Optional[List[Tuple[str, str]]]    # (path, target); None: not looked at / no answer
    stacks: Optional[List[dict]] = None       # cache-status stacks; None: no answer


@dataclass
class Ownership:
    """What oned's live VMs and images own, in the terms the facts use."""
    vm_ids: Set[int]
    image_ids: Set[int]
    image_sources: Set[Tuple[str, str]]
    vm_volumes: Set[Tuple[str, str]]
    entitled: Dict[Tuple[str, str], Set[str]]       # (vg, lv) -> hosts
    vm_hosts: Dict[int, Set[str]]
    # The VM whose leftovers are looked for (a DONE VM is no longer among the live ones).
    focus_volumes: Dict[Tuple[str, str], int] = field(default_factory=dict)

    def entitled_hosts(self, vg, lv):
        if _BASE_LV.match(lv):
            return ANY_HOST
        m = _MAP_LV.match(lv)
        if m:
            lv = m.group(1)
        return self.entitled.get((vg, lv), set())


def attached_hosts(vm):
    """Hosts where the VM's disks are (or may be, mid-migration) attached."""
    if vm.state not in ATTACHED_STATES:
        return set()
    records = vm.history
    if not records:
        return set()
    hosts = {records[-1].hostname}
    if vm.state == VmState.ACTIVE and vm.lcm_state in MIGRATING and len(records) > 1:
        hosts.add(records[-2].hostname)
    return hosts


def ownership(vms, images, volumes_of, focus_vm=None):
    """`volumes_of(vm)` -> [(disk id, Volume)] (Cloud.volumes_of)."""
    own = Ownership(vm_ids=set(), image_ids=set(), image_sources=set(), vm_volumes=set(),
                    entitled={}, vm_hosts={})
    for vm in vms:
        own.vm_ids.add(vm.id)
        hosts = attached_hosts(vm)
        own.vm_hosts[vm.id] = hosts
        for _disk_id, volume in volumes_of(vm):
            key = (volume.vg, volume.lv)
            own.vm_volumes.add(key)
            own.entitled.setdefault(key, set()).update(hosts)
    for image in images:
        own.image_ids.add(image.id)
        try:
            own.image_sources.add(tuple(naming.parse_source(image.source)))
        except ValueError:
            pass   # no SOURCE yet, or not one of ours
    if focus_vm is not None:
        for _disk_id, volume in volumes_of(focus_vm):
            own.focus_volumes[(volume.vg, volume.lv)] = focus_vm.id
    return own


def lv_owner(name, tags):
    """("vm", id) | ("image", id) | ("unknown", None) for a tm_iscsi LV; None if not ours."""
    values = dict(t.split("=", 1) for t in tags if t.startswith("tm_iscsi.") and "=" in t)
    if values.get("tm_iscsi.vm", "").isdigit():
        return "vm", int(values["tm_iscsi.vm"])
    m = _VM_LV.match(name)
    if m:
        return "vm", int(m.group(1))
    if values.get("tm_iscsi.image", "").isdigit():
        return "image", int(values["tm_iscsi.image"])
    m = _IMAGE_LV.match(name)
    if m:
        return "image", int(m.group(1))
    if "tm_iscsi" in tags:
        return "unknown", None
    return None


def _lv_verdict(own, vg, name, tags):
    """(owner, reason or None): reason is why the LV is an orphan."""
    owner = lv_owner(name, tags)
    if owner is None:
        return None, None
    if (vg, name) in own.image_sources or (vg, name) in own.vm_volumes:
        return owner, None
    kind, number = owner
    if kind == "vm" and number not in own.vm_ids:
        return owner, f"VM {number} is gone (DONE or deleted)"
    if kind == "image" and number not in own.image_ids:
        return owner, f"image {number} does not exist"
    if kind == "unknown":
        return owner, "tagged tm_iscsi but names no VM or image, and no image has it as SOURCE"
    return owner, None


def _attribution(own, vg, lv, owner):
    vm = own.focus_volumes.get((vg, lv))
    image = None
    if owner:
        if owner[0] == "vm" and vm is None:
            vm = owner[1]
        elif owner[0] == "image":
            image = owner[1]
    return vm, image


def _target_map(storage):
    """target IQN -> (vg, lv, iqn base) for every target named after an LV of these VGs
    (existing LVs first, then the backstore name `<vg>.<lv>` of targets whose LV is gone)."""
    mapping = {}
    for vg, rows in storage.vgs.items():
        for row in rows:
            for base in storage.iqn_bases:
                mapping[naming.target_iqn(vg, row["lv"], base)] = (vg, row["lv"], base)
    for target in storage.exports or []:
        iqn, backstore = target.get("iqn"), target.get("backstore") or ""
        if iqn in mapping:
            continue
        for i, char in enumerate(backstore):
            if char != ".":
                continue
            vg, lv = backstore[:i], backstore[i + 1:]
            for base in storage.iqn_bases:
                if naming.target_iqn(vg, lv, base) == iqn:
                    mapping[iqn] = (vg, lv, base)
    return mapping


def _ours(iqn, bases):
    return any(iqn.startswith(base + ":") for base in bases)


def find_orphans(own, storages, hosts):
    """Findings for `storages` ([StorageFacts]) and `hosts` ([HostFacts])."""
    findings = []
    initiator_host = {h.initiator: h.name for h in hosts if h.initiator}
    known_initiator = {h.name: h.initiator for h in hosts}
    target_verdicts = {}   # iqn -> set of hosts entitled (ANY_HOST) or "orphan"
    all_exported = set()
    complete_exports = all(s.exports is not None for s in storages)
    all_bases = {b for s in storages for b in s.iqn_bases}
    owners = {}
    target_lvs = {}        # iqn -> (vg, lv, base), over every storage node
    names = {row["lv"] for s in storages for rows in s.vgs.values() for row in rows}
    complete_vgs = bool(storages) and all(s.vgs for s in storages)

    def lv_exists(lv):
        # None: cannot tell (no storage node answered with its VGs).
        return (lv in names) if complete_vgs else None

    epochs = {row["lv"]: protocol.tag_value(row.get("tags"), protocol.WB_EPOCH_TAG)
              for s in storages for rows in s.vgs.values() for row in rows}
    lv_exists.epoch = epochs.get

    for storage in storages:
        lv_rows = {(vg, row["lv"]): row for vg, rows in storage.vgs.items() for row in rows}
        orphan_lvs = set()
        for (vg, name), row in sorted(lv_rows.items()):
            owner, reason = _lv_verdict(own, vg, name, row.get("tags") or [])
            owners[(vg, name)] = owner
            if reason:
                orphan_lvs.add((vg, name))
                vm, image = _attribution(own, vg, name, owner)
                findings.append(Finding("lv", storage.host, f"{vg}/{name}", reason, vm, image,
                                        {"vg": vg, "lv": name,
                                         "tagged": "tm_iscsi" in (row.get("tags") or [])}))
        mapping = _target_map(storage)
        target_lvs.update(mapping)
        if storage.exports is None:
            continue
        for target in storage.exports:
            iqn = target.get("iqn") or ""
            all_exported.add(iqn)
            if not _ours(iqn, storage.iqn_bases):
                continue
            initiators = list(target.get("initiators") or [])
            where = mapping.get(iqn)
            if where is None:
                findings.append(Finding("target", storage.host, iqn,
                                        "not named after any LV of the datastores' VGs",
                                        detail={"initiators": initiators}))
                target_verdicts[iqn] = "orphan"
                continue
            vg, lv, base = where
            owner = owners.get((vg, lv)) or lv_owner(lv, [])
            vm, image = _attribution(own, vg, lv, owner)
            detail = {"vg": vg, "lv": lv, "iqn_base": base, "initiators": initiators}
            if vg in storage.vgs and (vg, lv) not in lv_rows:
                reason = f"its LV {vg}/{lv} no longer exists"
            elif (vg, lv) in orphan_lvs:
                reason = f"its LV {vg}/{lv} is an orphan"
            else:
                entitled = own.entitled_hosts(vg, lv)
                reason = None if entitled is ANY_HOST or entitled else \
                    f"no VM has {vg}/{lv} attached on any host"
            if reason:
                target_verdicts[iqn] = "orphan"
                findings.append(Finding("target", storage.host, iqn, reason, vm, image, detail))
                continue
            entitled = own.entitled_hosts(vg, lv)
            target_verdicts[iqn] = entitled
            if entitled is ANY_HOST:
                continue
            allowed = {known_initiator.get(h) for h in entitled}
            if None in allowed:
                continue   # an entitled host's initiator is unknown: cannot tell
            for initiator in initiators:
                if initiator not in allowed:
                    holder = initiator_host.get(initiator, "an unknown host")
                    findings.append(Finding(
                        "acl", storage.host, initiator,
                        f"ACL of {holder} on {iqn}: only {', '.join(sorted(entitled))} "
                        f"use {vg}/{lv}", vm, image, dict(detail, initiator=initiator, iqn=iqn)))

    for host in hosts:
        for session in host.sessions or []:
            iqn = session.get("iqn") or ""
            if not _ours(iqn, all_bases):
                continue
            verdict = target_verdicts.get(iqn)
            detail = {"iqn": iqn, "portal": session.get("portal")}
            if iqn in target_lvs:
                vg, lv, _base = target_lvs[iqn]
                vm, image = _attribution(own, vg, lv, owners.get((vg, lv)) or lv_owner(lv, []))
            else:
                m, n = _IQN_VM.search(iqn), _IQN_IMAGE.search(iqn)
                vm, image = (int(m.group(1)) if m else None), (int(n.group(1)) if n else None)
            if verdict is None:
                if not complete_exports or iqn in all_exported:
                    continue
                reason = "its target is no longer exported"
            elif verdict == "orphan":
                reason = "its target is an orphan"
            elif verdict is ANY_HOST or host.name in verdict:
                continue
            else:
                reason = f"no VM using this target is attached on {host.name}"
            findings.append(Finding("session", host.name, iqn, reason, vm, image, detail))
        findings.extend(_stack_findings(own, host, lv_exists))
        for path, target in host.links or []:
            m = _LINK.search(path)
            if not m:
                continue
            vm_id = int(m.group(1))
            if vm_id not in own.vm_ids:
                reason = f"VM {vm_id} is gone (DONE or deleted)"
            elif host.name not in own.vm_hosts.get(vm_id, set()):
                reason = f"VM {vm_id} is not attached on {host.name}"
            else:
                continue
            findings.append(Finding("link", host.name, path, f"{reason} (-> {target})", vm_id,
                                    detail={"path": path}))
    return sorted(findings, key=lambda f: (KINDS.index(f.kind), f.node, f.name))


def _stack_findings(own, host, lv_exists):
    """A host's cache stack (named after its disk's LV) that no VM attached there uses. Removing
    it flushes its write-back data when the LV still exists, and drops it when it does not."""
    for stack in host.stacks or []:
        name = stack.get("name") or ""
        m, n = _VM_LV.match(name), _IMAGE_LV.match(name)
        users = {h for (_vg, lv), hosts in own.entitled.items() if lv == name for h in hosts}
        if host.name in users:
            continue
        vm = int(m.group(1)) if m else None
        if vm is not None and vm not in own.vm_ids:
            reason = f"VM {vm} is gone (DONE or deleted)"
        elif vm is not None and host.name in own.vm_hosts.get(vm, set()):
            continue   # a disk of a live VM on this host that oned does not list (yet)
        else:
            reason = f"no VM has {name} attached on {host.name}"
        exists = lv_exists(name)
        dirty = int(stack.get("dirty_blocks") or 0)
        # The disk was recovered from its checkpoint after this host was declared lost: what
        # the host still caches of it is older than the disk and is never written back.
        void = exists is True and lv_exists.epoch(name) != stack.get("wb_epoch") and \
            protocol.has_writeback(stack.get("mode") or "")
        if exists is False and dirty:
            reason += f"; its LV is gone, {dirty} dirty blocks will be dropped"
        elif void:
            reason += "; its write-back data predates the disk's recovery (host-lost) and " \
                      "will be dropped"
        yield Finding("stack", host.name, name, reason, vm, int(n.group(1)) if n else None,
                      {"name": name, "flush": exists is not False and not void})


def related_to_vm(findings, vm_id):
    return [f for f in findings if f.vm == vm_id]
