"""`tm-iscsi deploy`: N VMs of one template (or one image) at once, through oned, followed to
RUNNING, with what each took and what the hosts' caches did meanwhile.

The VMs are instantiated in one burst, as a user's script would; oned and its scheduler then
place and deploy them (up to 15 transfers at once by default), or, with `hosts`, they are created
on hold and `onevm deploy`ed round-robin over those hosts. One `one.vmpool.infoextended` per
poll follows all of them. A VM that fails is reported with oned's error and does not hold up the
others."""
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import DriverError
from ..one.states import LcmState, VmState
from . import status as status_mod
from .views import one_template

_FAILED_STATES = (VmState.FAILED, VmState.DONE, VmState.POWEROFF, VmState.UNDEPLOYED,
                  VmState.STOPPED, VmState.SUSPENDED)
MAX_COUNT = 1000


@dataclass
class Tracked:
    vm_id: int
    name: str
    started: float
    state: str = "PENDING"
    host: Optional[str] = None
    seconds: Optional[float] = None
    error: Optional[str] = None

    @property
    def done(self):
        return self.seconds is not None or self.error is not None


@dataclass
class Report:
    vms: List[Tracked] = field(default_factory=list)
    caches: List[Dict[str, object]] = field(default_factory=list)
    terminated: bool = False

    @property
    def failed(self):
        return [t for t in self.vms if t.error]

    def as_json(self):
        times = sorted(t.seconds for t in self.vms if t.seconds is not None)
        return {"vms": [t.__dict__ for t in self.vms], "running": len(times),
                "failed": len(self.failed), "caches": self.caches,
                "seconds": {"first": times[0] if times else None,
                            "median": times[len(times) // 2] if times else None,
                            "last": times[-1] if times else None},
                "terminated": self.terminated}


def _image_template(image_id, name):
    """A VM of one image: what `onevm create` would be given (the image's datastore decides the
    driver and cache mode)."""
    return one_template({"NAME": name, "CPU": "0.1", "VCPU": "1", "MEMORY": "128"}) + \
        f'DISK = [ IMAGE_ID = "{int(image_id)}" ]\n'


def instantiate(cloud, count, template_id=None, image_id=None, hosts=(), prefix=None,
                clock=time.monotonic):
    if not 1 <= count <= MAX_COUNT:
        raise DriverError(f"--count {count}: from 1 to {MAX_COUNT}")
    if (template_id is None) == (image_id is None):
        raise DriverError("give --template ID or --image ID")
    host_ids = [cloud.host(h).id for h in hosts]       # refused before anything is created
    prefix = prefix or f"tm-iscsi-deploy-{int(time.time())}"
    hold = bool(host_ids)
    tracked = []
    for n in range(count):
        name = f"{prefix}-{n}"
        if template_id is not None:
            vm_id = cloud.one.template_instantiate(template_id, name, hold=hold)
        else:
            vm_id = cloud.one.vm_allocate(_image_template(image_id, name), hold=hold)
        tracked.append(Tracked(vm_id, name, clock()))
    for n, item in enumerate(tracked):
        if host_ids:
            cloud.one.vm_deploy(item.vm_id, host_ids[n % len(host_ids)])
    return tracked


def follow(cloud, tracked, timeout, poll=2.0, sleep=time.sleep, clock=time.monotonic,
           progress=lambda running, failed, total: None):
    """Until every VM is RUNNING or failed (or `timeout` seconds pass)."""
    by_id = {t.vm_id: t for t in tracked}
    deadline = clock() + timeout
    while True:
        for vm in cloud.one.vm_pool(-2):
            item = by_id.get(vm.id)
            if item is None or item.done:
                continue
            item.state = vm.state_name
            if vm.history:
                item.host = vm.current_history.hostname
            if vm.state == VmState.ACTIVE and vm.lcm_state == LcmState.RUNNING:
                item.seconds = round(clock() - item.started, 1)
            elif vm.state in _FAILED_STATES or vm.lcm_state.name.endswith("FAILURE"):
                item.error = vm.error or f"{vm.state_name} (onevm show {vm.id})"
        running = sum(1 for t in tracked if t.seconds is not None)
        failed = sum(1 for t in tracked if t.error)
        progress(running, failed, len(tracked))
        if all(t.done for t in tracked):
            return
        if clock() > deadline:
            for t in tracked:
                if not t.done:
                    t.error = f"still {t.state} after {timeout}s"
            return
        sleep(poll)


def cache_figures(cloud, hosts):
    """Per host the VMs were placed on: read caches, how their reads split, free cache space."""
    data = status_mod.cache_stats(cloud, sorted(hosts))
    rows = []
    for host in data["hosts"]:
        reads = [r for r in data["read_caches"] if r["host"] == host["host"]]
        hits = sum(r["read_hits_total"] or 0 for r in reads)
        misses = sum(r["read_misses_total"] or 0 for r in reads)
        rows.append({"host": host["host"], "state": host["state"], "read_caches": len(reads),
                     "read_hits": hits, "read_misses": misses,
                     "hit_percent": round(100.0 * hits / (hits + misses), 1)
                     if hits + misses else None,
                     "free_mib": (host["free_bytes"] or 0) >> 20})
    return rows


def terminate(cloud, tracked, timeout, poll=2.0, sleep=time.sleep, clock=time.monotonic):
    for t in tracked:
        cloud.one.vm_action("terminate-hard", t.vm_id)
    ids = {t.vm_id for t in tracked}
    deadline = clock() + timeout
    while True:
        left = [vm.id for vm in cloud.one.vm_pool(-2)
                if vm.id in ids and vm.state != VmState.DONE]
        if not left:
            return
        if clock() > deadline:
            raise DriverError(f"{len(left)} VM(s) not DONE {timeout}s after terminate: "
                              f"{', '.join(map(str, left[:10]))}")
        sleep(poll)


def deploy(cloud, count, template_id=None, image_id=None, hosts=(), wait=True,
           terminate_after=False, timeout=1800, poll=2.0, sleep=time.sleep,
           clock=time.monotonic, progress=lambda running, failed, total: None):
    report = Report(vms=instantiate(cloud, count, template_id, image_id, hosts, clock=clock))
    if not (wait or terminate_after):
        return report
    follow(cloud, report.vms, timeout, poll, sleep, clock, progress)
    placed = {t.host for t in report.vms if t.host}
    if placed:
        report.caches = cache_figures(cloud, placed)
    if terminate_after:
        terminate(cloud, report.vms, timeout, poll, sleep, clock)
        report.terminated = True
    return report
