"""HOST ERROR hook: revoke the failed host's access to every LUN of every iscsi_lvm datastore.

A host in ERROR may still be running its VMs (a network split, a hung monitor). If oned restarts
them elsewhere while the old host still writes through its sessions, two hosts write one disk.
Deleting the host's ACLs on the storage nodes ends its sessions (LIO drops them with the ACL) and
stops any new login, so whatever the old host still has in flight fails instead of landing.

Which initiator name to revoke, when the host itself may be unreachable (vmm_hooks/README.md):
1. the host's template attribute ISCSI_INITIATOR, recorded ahead of time by
   `tm-iscsi-hook record-initiators` (also run by `register`);
2. otherwise the ACLs on the storage nodes: the initiator allowed on every target of the disks
   of the VMs placed on the host, less the names recorded for other hosts. One name must be
   left; it is then recorded as ISCSI_INITIATOR so the next fence needs no inference.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from tm_iscsi.admin import ownership
from tm_iscsi.admin.views import INITIATOR_ATTR, Host
from tm_iscsi.errors import DriverError

# Host states in which a fence is expected; any other needs --force (a healthy host would lose
# every disk of its running VMs, and a DISABLED one still runs its VMs).
FENCEABLE = ("ERROR", "MONITORING_ERROR", "OFFLINE")


@dataclass
class FenceResult:
    host: str
    initiator: Optional[str]
    source: str                                   # recorded | acl | none
    revoked: Dict[str, List[str]] = field(default_factory=dict)   # storage node -> targets
    errors: Dict[str, str] = field(default_factory=dict)          # storage node -> error
    recorded: bool = False

    @property
    def ok(self):
        return not self.errors


def targets_of_host(cloud, host):
    """IQNs of the disks of the VMs placed on `host` (a views.Host)."""
    iqns = set()
    for vm in cloud.vms():
        if vm.id in host.vm_ids or host.name in ownership.attached_hosts(vm):
            iqns.update(volume.iqn for _disk, volume in cloud.volumes_of(vm))
    return iqns


def infer_initiator(host_name, targets, exports, others):
    """The one initiator allowed on every target in `targets` ([export rows]) that is not
    another host's (`others`). Raises DriverError when there is not exactly one."""
    sets = []
    for target in exports:
        if target.get("iqn") in targets:
            names = set(target.get("initiators") or []) - set(others)
            if names:
                sets.append(names)
    if not sets:
        return None
    common = set.intersection(*sets)
    if len(common) == 1:
        return common.pop()
    seen = sorted(set.union(*sets))
    raise DriverError(f"cannot tell which initiator is {host_name}'s: the disks of its VMs are "
                      f"exported to {', '.join(seen)}; record it with onehost update "
                      f"{host_name} ({INITIATOR_ATTR}=\"iqn...\") and fence again")


def fence(cloud, host, force=False):
    """Fence `host` (a views.Host); a FenceResult. Idempotent: a second run revokes nothing."""
    current = cloud.one.host_info(host.id)
    state = Host.from_element(current).state
    if state not in FENCEABLE and not force:
        raise DriverError(f"host {host.name} is {state} now, not in ERROR: not fencing a host "
                          "that may be running VMs (add --force to fence it anyway)")
    storages = cloud.storage_hosts()
    if not storages:
        raise DriverError("no iscsi_lvm datastore has a usable ISCSI_HOST; nothing to fence on")
    result = FenceResult(host.name, host.initiator, "recorded" if host.initiator else "none")
    if result.initiator is None:
        targets = targets_of_host(cloud, host)
        exports = []
        for storage in storages:
            try:
                exports += cloud.node(storage).call("exports").get("targets", [])
            except DriverError as err:
                result.errors[storage] = str(err)
        others = {h.initiator for h in cloud.hosts() if h.name != host.name and h.initiator}
        result.initiator = infer_initiator(host.name, targets, exports, others)
        if result.initiator is None:
            # Nothing of its VMs is exported to anyone: there is nothing it could still write.
            return result
        result.source = "acl"
    for storage in storages:
        try:
            answer = cloud.node(storage).call("fence", "--initiator", result.initiator)
            result.revoked[storage] = list(answer.get("targets", []))
            result.errors.pop(storage, None)
        except DriverError as err:
            result.errors[storage] = str(err)
    if result.source == "acl":
        cloud.one.host_update(host.id, f'{INITIATOR_ATTR} = "{result.initiator}"', merge=True)
        result.recorded = True
    return result


def report(result, out):
    if result.initiator is None:
        print(f"{result.host}: no initiator recorded and no disk of its VMs is exported: "
              "nothing to revoke", file=out)
    else:
        how = {"recorded": f"{INITIATOR_ATTR} of the host in oned",
               "acl": "the ACLs of its VMs' disks"}[result.source]
        print(f"{result.host}: initiator {result.initiator} (from {how})", file=out)
        if result.recorded:
            print(f"{result.host}: recorded {INITIATOR_ATTR}={result.initiator} in oned", file=out)
    for storage, targets in sorted(result.revoked.items()):
        if targets:
            print(f"{storage}: revoked {result.initiator} on {len(targets)} target(s):", file=out)
            for iqn in targets:
                print(f"  {iqn}", file=out)
        else:
            print(f"{storage}: {result.initiator} has no ACL left (already fenced)", file=out)
    for storage, error in sorted(result.errors.items()):
        print(f"{storage}: NOT fenced: {error}", file=out)
