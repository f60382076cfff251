"""`tm-iscsi smoke-test`: one VM through its whole life on the real cloud, through oned.

Instantiate a template, wait for RUNNING, check on the VM's host that every iscsi_lvm disk is
there (the host has a session to the disk's target, with a device, and disk.N links to a block
device), terminate it, wait for DONE, and check it left nothing behind (the leftovers rules).
The VM is terminated whatever happened, unless --keep."""
import os
import time

from ..errors import DriverError
from ..one.states import LcmState, VmState

_BAD_STATES = (VmState.FAILED, VmState.DONE, VmState.POWEROFF, VmState.UNDEPLOYED,
               VmState.STOPPED, VmState.SUSPENDED, VmState.HOLD)
_CHECK_LINKS = ('for p in "$@"; do if [ -L "$p" ] && [ -b "$p" ]; then '
                'echo "ok $p $(readlink -f "$p")"; else echo "missing $p"; fi; done')


class SmokeFailure(DriverError):
    pass


class _Run:
    def __init__(self, cloud, timeout, poll, sleep, clock, log):
        self.cloud, self.timeout, self.poll = cloud, timeout, poll
        self.sleep, self.clock, self.log = sleep, clock, log
        self.start = clock()
        self.steps = []

    def step(self, name, detail, ok=True):
        self.steps.append({"step": name, "ok": ok, "detail": detail,
                           "seconds": round(self.clock() - self.start, 1)})
        self.log(f"{'ok' if ok else 'FAILED'}: {name}: {detail}")

    def wait(self, vm_id, want, what):
        deadline = self.clock() + self.timeout
        while True:
            vm = self.cloud.one.vm_info(vm_id)
            if want(vm):
                return vm
            if what == "RUNNING" and (vm.state in _BAD_STATES or
                                      vm.lcm_state.name.endswith("FAILURE")):
                raise SmokeFailure(f"VM {vm_id} is {vm.state_name} instead of RUNNING: "
                                   f"{vm.error or 'see onevm show ' + str(vm_id)}")
            if self.clock() > deadline:
                raise SmokeFailure(f"VM {vm_id} is still {vm.state_name} after {self.timeout}s, "
                                   f"not {what}")
            self.sleep(self.poll)


def check_disks(cloud, vm):
    """[problem] of the VM's iscsi_lvm disks on its host (empty: all attached)."""
    host = vm.current_history.hostname
    volumes = cloud.volumes_of(vm)
    if not volumes:
        return [f"VM {vm.id} has no iscsi_lvm disk: the template does not test the driver"]
    sessions = {s.get("iqn"): s for s in cloud.node(host).call("sessions").get("sessions", [])}
    base = next((e.view.text("BASE_PATH") for e in cloud.datastores()
                 if e.id == vm.current_history.ds_id), None)
    problems, links = [], []
    for disk_id, volume in volumes:
        session = sessions.get(volume.iqn)
        if session is None:
            problems.append(f"disk {disk_id}: {host} has no session to {volume.iqn}")
        elif not session.get("devices"):
            problems.append(f"disk {disk_id}: the session to {volume.iqn} on {host} has no disk")
        if base:
            links.append(os.path.join(os.path.normpath(base), str(vm.id), f"disk.{disk_id}"))
    if not base:
        problems.append(f"system datastore {vm.current_history.ds_id} is not an iscsi_lvm one")
    elif links:
        result = cloud.shell(host, ["sh", "-c", _CHECK_LINKS, "sh", *links])
        if result.returncode != 0:
            problems.append(f"cannot look at the disk links on {host}: "
                            f"{(result.stderr or '').strip() or result.returncode}")
        for line in result.stdout.splitlines():
            if line.startswith("missing "):
                problems.append(f"{host}:{line[8:]} is not a link to a block device")
    return problems


def smoke_test(cloud, template_id, name=None, timeout=600, keep=False, poll=2.0,
               sleep=time.sleep, clock=time.monotonic, log=lambda line: None):
    from vmm_hooks import leftovers
    run = _Run(cloud, timeout, poll, sleep, clock, log)
    name = name or f"tm-iscsi-smoke-{int(time.time())}"
    vm_id = cloud.one.template_instantiate(template_id, name)
    run.step("instantiate", f"template {template_id} -> VM {vm_id} ({name})")
    failure = None
    try:
        vm = run.wait(vm_id, lambda v: v.state == VmState.ACTIVE and
                      v.lcm_state == LcmState.RUNNING, "RUNNING")
        host = vm.current_history.hostname
        run.step("running", f"VM {vm_id} runs on {host}")
        problems = check_disks(cloud, vm)
        if problems:
            raise SmokeFailure("; ".join(problems))
        run.step("disks", f"{len(cloud.volumes_of(vm))} iscsi_lvm disk(s) attached on {host}")
    except DriverError as err:
        failure = err
        run.step("check", str(err), ok=False)
    if keep:
        if failure:
            raise failure
        run.step("keep", f"VM {vm_id} left running (--keep)")
        return {"vm": vm_id, "ok": True, "steps": run.steps}
    cloud.one.vm_action("terminate-hard", vm_id)
    done = run.wait(vm_id, lambda v: v.state == VmState.DONE, "DONE")
    run.step("terminate", f"VM {vm_id} is DONE")
    found, notes = leftovers.find(cloud, done)
    if found:
        left = ", ".join(f"{f.kind} {f.name} on {f.node}" for f in found)
        run.step("leftovers", left, ok=False)
        failure = failure or SmokeFailure(f"VM {vm_id} left behind: {left} (tm-iscsi-hook "
                                          f"leftovers --vm {vm_id} --clean removes them)")
    else:
        run.step("leftovers", "nothing left behind" + (f" ({'; '.join(notes)})" if notes else ""))
    if failure:
        failure.steps = run.steps
        raise failure
    return {"vm": vm_id, "ok": True, "steps": run.steps}
