"""VM DONE hook: what a VM left behind after it was terminated.

oned does not retry a failed epilog, and a `onevm recover --delete` skips the driver's cleanup
when the action fails again: the clone and volatile LVs, their targets and ACLs, the hosts'
sessions and disk.N links can outlive the VM. This hook looks for them (on the storage nodes and
on the hosts of the VM's history), reports them, and removes them only with --clean. What another
live VM or an image still uses (a persistent image's LV, a shared target) is never reported: the
rules are those of `tm-iscsi orphans` (tm_iscsi/admin/ownership.py), limited to this VM."""
from tm_iscsi.admin import inventory, ownership
from tm_iscsi.errors import DriverError
from tm_iscsi.one.states import VmState


def find(cloud, vm):
    """(findings of `vm`, problems). `vm` is a VirtualMachine view of a DONE VM."""
    if vm.state != VmState.DONE:
        raise DriverError(f"VM {vm.id} is {vm.state.name}, not DONE: what it has is in use")
    hosts = {record.hostname for record in vm.history}
    findings, problems = inventory.orphans(cloud, host_names=hosts, focus_vm=vm)
    return ownership.related_to_vm(findings, vm.id), problems
