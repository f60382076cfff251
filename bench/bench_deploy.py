#!/usr/bin/env python3
"""Deploy cost on the lab, everything measured in one run (bench/results/deploy.json):

- calls: ssh round trips per TM action and cache mode, counted at the ssh boundary (an `ssh` on
  PATH that logs each invocation and runs the real one), not by the code under test;
- floor_ratio: the deploy of one disk against the floor measured in the same run: the kernel
  commands the deploy needs (thin snapshot, LIO export, iSCSI login, the link) run by hand in one
  ssh session per node;
- burst: N VMs of one image on the two hosts in read+writeback, 15 actions at a time as one_tm
  runs them: failures, p95 clone latency over a single clone's, stacks without their read layer,
  and what is left after terminating all of them (15 at a time); then the same number of
  floors 15 at a time (burst.floor): what the lab's machines make of 15 deploys at once when
  the kernel commands are typed by hand, and the burst's p95 against that floor's
  (burst.p95_over_floor_p95);
- lv_scale: clone latency with 1,000 LVs in the VG against 10.

    bench/bench_deploy.py [--burst 50] [--lv-scale 1000] [--repeat 3] [--reuse]

The driver reaches the hosts' initiator names from oned (ISCSI_INITIATOR in the host templates,
as `tm-iscsi-hooks register` records them), as on an installed cloud."""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import api, config  # noqa: E402
from lab.session import LabSession  # noqa: E402
from harness.cloud import IMAGE_VG, REMOTES, SYSDIR, Cloud  # noqa: E402
from lab.ship import LAB_CACHE_VG  # noqa: E402
from harness.oned import OnedStandIn  # noqa: E402
from harness.transfer import TransferManager  # noqa: E402
from harness.documents import host_xml, vm_xml  # noqa: E402
from tm_iscsi import remote  # noqa: E402

MODES = ("none", "read+writeback")
PARALLEL = 15
SSH_WRAPPER = """#!/bin/sh
echo "$$ $*" >> "$TM_BENCH_SSH_LOG"
exec /usr/bin/ssh "$@"
"""


class Counted:
    """The cloud's driver with every ssh invocation logged."""

    def __init__(self, cloud, workdir):
        self.cloud = cloud
        bindir = Path(workdir) / "bin"
        bindir.mkdir(exist_ok=True)
        (bindir / "ssh").write_text(SSH_WRAPPER)
        (bindir / "ssh").chmod(0o755)
        self.log = Path(workdir) / "ssh.log"
        self.log.write_text("")
        # The driver's own record of each node call's seconds: where a burst's time goes.
        self.trace = Path(workdir) / "trace.jsonl"
        self.trace.write_text("")
        env = dict(cloud.env, PATH=f"{bindir}:{os.environ['PATH']}",
                   TM_BENCH_SSH_LOG=str(self.log), TM_ISCSI_TRACE=str(self.trace))
        cloud.env = env
        cloud.tm = TransferManager(REMOTES, drivers=["iscsi_lvm"], env=env, timeout=900)

    def lines(self):
        return self.log.read_text().splitlines()

    def traced(self):
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line]


    def run(self, line, stdin=None):
        before = len(self.lines())
        started = time.monotonic()
        result = self.cloud.tm_action(line, stdin=stdin)
        seconds = time.monotonic() - started
        if not result.success:
            raise SystemExit(f"{line}: {result.info}")
        return len(self.lines()) - before, seconds


def _p95(seconds):
    ordered = sorted(seconds)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


def _percentiles(records):
    """command -> {calls, p50, p95} seconds of the node calls in `records`."""
    out = {}
    for command in sorted({r["command"] for r in records}):
        seconds = [r["seconds"] for r in records if r["command"] == command]
        out[command] = {"calls": len(seconds), "p50": round(statistics.median(seconds), 2),
                        "p95": round(_p95(seconds), 2)}
    return out


def _disk(host, vm, disk):
    return f"{host}:{SYSDIR}/{vm}/disk.{disk}"


def measure_calls(counted, mode, vm):
    cloud = counted.cloud
    cloud.set_cache_mode(mode)
    cloud.oned.put_xml(vm_xml(vm, hosts=("host1",), disks=(0, 1, 2, 3)))
    out = {}
    out["clone"], _ = counted.run(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 "
                                  f"{_disk('host1', vm, 0)} {vm} 100")
    out["mkimage"], _ = counted.run(f"MKIMAGE iscsi_lvm 64 raw {_disk('host1', vm, 2)} {vm} 101")
    out["mkswap"], _ = counted.run(f"MKSWAP iscsi_lvm 64 {_disk('host1', vm, 3)} {vm} 101")
    out["ln"], _ = counted.run(f"LN iscsi_lvm frontend:{IMAGE_VG}/img-1 "
                               f"{_disk('host1', vm, 1)} {vm} 100")
    out["mv_stop"], _ = counted.run(f"MV iscsi_lvm {_disk('host1', vm, 0)} "
                                    f"{_disk('frontend', vm, 0)} {vm} 100")
    out["mv_resume"], _ = counted.run(f"MV iscsi_lvm {_disk('frontend', vm, 0)} "
                                      f"{_disk('host1', vm, 0)} {vm} 100")
    out["mv_cold"], _ = counted.run(f"MV iscsi_lvm {_disk('host1', vm, 0)} "
                                    f"{_disk('host2', vm, 0)} {vm} 100")
    # A live migration of the whole VM (its four disks) back to host1.
    for disk in (1, 2, 3):
        counted.run(f"MV iscsi_lvm {_disk('host1', vm, disk)} {_disk('host2', vm, disk)} "
                    f"{vm} {100 if disk == 1 else 101}")
    cloud.oned.put_xml(vm_xml(vm, hosts=("host2", "host1"), disks=(0, 1, 2, 3)))
    # No VM document on stdin (it would be the captured VM 0's): the driver reads it from oned.
    pre, _ = counted.run(f"PREMIGRATE iscsi_lvm host2 host1 {SYSDIR}/{vm} {vm} 101")
    post, _ = counted.run(f"POSTMIGRATE iscsi_lvm host2 host1 {SYSDIR}/{vm} {vm} 101")
    out["live_migration_4_disks"] = pre + post
    out["delete"], _ = counted.run(f"DELETE iscsi_lvm {_disk('host1', vm, 0)} {vm} 100")
    for disk in (1, 2, 3):
        counted.run(f"DELETE iscsi_lvm {_disk('host1', vm, disk)} {vm} "
                    f"{100 if disk == 1 else 101}")
    counted.run(f"DELETE iscsi_lvm host1:{SYSDIR}/{vm} {vm} 101")
    return out


def _deploy(counted, vm):
    counted.cloud.oned.put_xml(vm_xml(vm, hosts=("host1",), disks=(0,)))
    return counted.run(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 {_disk('host1', vm, 0)} "
                       f"{vm} 100")[1]


def _terminate(counted, vm):
    counted.run(f"DELETE iscsi_lvm {_disk('host1', vm, 0)} {vm} 100")
    counted.run(f"DELETE iscsi_lvm host1:{SYSDIR}/{vm} {vm} 101")


def deploy_seconds(counted, mode, first_vm, repeat):
    """The median of `repeat` deploys in the steady state the floor types by hand: VM first_vm
    of the same image keeps running on host1 meanwhile, so the image's base stays logged in
    there and its read cache up (the last VM of an image on a host takes both away). Uses VMs
    first_vm .. first_vm + repeat."""
    counted.cloud.set_cache_mode(mode)
    _deploy(counted, first_vm)
    times = []
    try:
        for vm in range(first_vm + 1, first_vm + 1 + repeat):
            times.append(_deploy(counted, vm))
            _terminate(counted, vm)
    finally:
        _terminate(counted, first_vm)
    return statistics.median(times)


# The floor: what the kernel has to be told for one deploy, typed by hand, one ssh session per
# node. In mode none: a thin snapshot, its LIO export, the login, the link. In read+writeback, in
# the steady state (the image's base exported and logged in on the host, as after its first
# deploy there): the clone and its region map (two thin LVs) exported, two logins, the write-back
# cache's two local LVs, the dm-clone table over the base and the dm-cache table over it, the
# link. (The shared read cache between base and dm-clone is made once per image, not per deploy.)
# LIO's configfs under one lock, as the driver keeps it: concurrent walks and creates race.
FLOOR_EXPORT = r"""
flock /run/lock/floor-lio /opt/tm_iscsi-venv/bin/python - <<'EOF'
import rtslib_fb as r
for name in NAMES:
    so = r.BlockStorageObject(name, dev="/dev/{vg}/" + name)
    t = r.Target(r.FabricModule("iscsi"), "iqn.2026-11.io.floor:" + name)
    tpg = r.TPG(t, 1)
    tpg.set_attribute("authentication", "0")
    r.NetworkPortal(tpg, "0.0.0.0", 3260)
    lun = r.LUN(tpg, 0, so)
    for initiator in {initiators!r}:
        r.MappedLUN(r.NodeACL(tpg, initiator), 0, lun)
    tpg.enable = True
EOF
"""
FLOOR_UNEXPORT = r"""
flock /run/lock/floor-lio /opt/tm_iscsi-venv/bin/python - <<'EOF'
import rtslib_fb as r
root = r.RTSRoot()
for t in list(root.targets):
    if t.wwn.startswith("iqn.2026-11.io.floor:") and t.wwn.split(":", 1)[1] in NAMES:
        t.delete()
for so in list(root.storage_objects):
    if so.name in NAMES:
        so.delete()
EOF
lvremove -q -y LVS >/dev/null
"""
FLOOR_LOGIN = r"""
login() {{
  flock /run/lock/floor-iscsiadm iscsiadm -m node -o new -T iqn.2026-11.io.floor:$1 -p {portal} \
    >/dev/null
  flock /run/lock/floor-iscsiadm iscsiadm -m node -T iqn.2026-11.io.floor:$1 -p {portal} --login \
    >/dev/null
  for i in $(seq 400); do
    d=$(ls /dev/disk/by-path/ 2>/dev/null | grep "iqn.2026-11.io.floor:$1-lun-0$" || true)
    [ -n "$d" ] && break; sleep 0.05
  done
  [ -n "$d" ] || {{ echo "no device for $1" >&2; exit 1; }}
  echo /dev/disk/by-path/$d
}}
"""
FLOOR_LOGOUT = r"""
for t in NAMES; do
  flock /run/lock/floor-iscsiadm iscsiadm -m node -T iqn.2026-11.io.floor:$t --logout \
    >/dev/null 2>&1 || true
  flock /run/lock/floor-iscsiadm iscsiadm -m node -T iqn.2026-11.io.floor:$t -o delete \
    >/dev/null 2>&1 || true
done
"""


def _names(script, names, lvs=""):
    return (script.replace("NAMES", repr(names) if "python" in script else " ".join(names))
            .replace("LVS", lvs))


FLOOR = {
    "none": {
        "storage": "set -e\nlvcreate -q -y --ignoremonitoring --snapshot --setactivationskip n "
                   "-n floor-{n} "
                   "{vg}/img-0 >/dev/null\n" + _names(FLOOR_EXPORT, ["floor-{n}"]),
        "host": "set -e\n" + FLOOR_LOGIN + r"""
clone=$(login floor-{n})
mkdir -p /tmp/floor && ln -sfn $clone /tmp/floor/disk.{n}
""",
        "undo_host": _names(FLOOR_LOGOUT, ["floor-{n}"]) + "rm -f /tmp/floor/disk.{n}\n",
        "undo_storage": _names(FLOOR_UNEXPORT, ["floor-{n}"], "{vg}/floor-{n}"),
    },
    "read+writeback": {
        "storage": r"""
set -e
lvcreate -q -y --ignoremonitoring --snapshot --setactivationskip n -n floor-{n} {vg}/img-0 \
  >/dev/null
lvcreate -q -y --ignoremonitoring --type thin --thinpool tpool -V 8m -n floor-{n}-map {vg} \
  >/dev/null
""" + _names(FLOOR_EXPORT, ["floor-{n}", "floor-{n}-map"]),
        "host": "set -e\n" + FLOOR_LOGIN + r"""
clone=$(login floor-{n}); map=$(login floor-{n}-map)
base=$(ls /dev/disk/by-path/*iqn.2026-11.io.floor:floor-base-lun-0)
lvcreate -q -y -W y -Z y -L 4m -n floor-{n}-wbmeta {cache_vg} >/dev/null
lvcreate -q -y -W y -Z y -L 64m -n floor-{n}-wb {cache_vg} >/dev/null
sectors=$(blockdev --getsz $clone)
dmsetup create floor-{n}-clone --table "0 $sectors clone $map $clone $base 128 1 no_hydration"
dmsetup create floor-{n}-top --table "0 $sectors cache /dev/{cache_vg}/floor-{n}-wbmeta \
/dev/{cache_vg}/floor-{n}-wb /dev/mapper/floor-{n}-clone 128 1 writeback smq 0"
mkdir -p /tmp/floor && ln -sfn /dev/mapper/floor-{n}-top /tmp/floor/disk.{n}
""",
        "undo_host": r"""
dmsetup remove floor-{n}-top >/dev/null 2>&1 || true
dmsetup remove floor-{n}-clone >/dev/null 2>&1 || true
lvremove -q -y {cache_vg}/floor-{n}-wb {cache_vg}/floor-{n}-wbmeta >/dev/null 2>&1 || true
""" + _names(FLOOR_LOGOUT, ["floor-{n}", "floor-{n}-map"]) + "rm -f /tmp/floor/disk.{n}\n",
        "undo_storage": _names(FLOOR_UNEXPORT, ["floor-{n}", "floor-{n}-map"],
                               "{vg}/floor-{n} {vg}/floor-{n}-map"),
    },
}
# The steady state of read+writeback: the image's base exported and logged in on host1.
FLOOR_BASE = {
    "storage": "set -e\nlvcreate -q -y --ignoremonitoring --snapshot --setactivationskip n "
               "-n floor-base "
               "{vg}/img-0 >/dev/null\n" + _names(FLOOR_EXPORT, ["floor-base"]),
    "host": "set -e\n" + FLOOR_LOGIN + "login floor-base >/dev/null\n",
    "undo_host": _names(FLOOR_LOGOUT, ["floor-base"]),
    "undo_storage": _names(FLOOR_UNEXPORT, ["floor-base"], "{vg}/floor-base"),
}


def ssh_session(node, script):
    """One ssh session to `node` running `script` as root (the lab's own key); its seconds. A
    connection sshd turns away before authentication (MaxStartups, when many open at once) is
    made again, as the driver's are."""
    import random
    import subprocess
    argv = ["ssh", "-F", str(config.SSH_CONFIG), f"root@{node}", "bash", "-s"]
    started = time.monotonic()
    for attempt in range(1, remote.CONNECT_ATTEMPTS + 1):
        result = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=300)
        if not remote.turned_away(result):
            break
        time.sleep(random.uniform(0.2, 0.5) * attempt)
    if result.returncode != 0:
        raise SystemExit(f"floor on {node}: {result.stderr.decode().strip()}")
    return time.monotonic() - started


class Floor:
    """The floor of `mode` (`with Floor(mode) as floor: floor.once()`), on host1, or for a burst
    on `hosts` (floor n on hosts[n % len(hosts)]): in read+writeback its own base is exported
    to and logged in on each of them for as long as it is open."""

    def __init__(self, mode, hosts=("host1",)):
        self.mode, self.scripts, self.hosts, self.n = mode, FLOOR[mode], hosts, 0
        self.fields = {"vg": IMAGE_VG, "portal": config.node("storage").ip,
                       "cache_vg": LAB_CACHE_VG}

    def _fields(self, host, **more):
        return dict(self.fields, initiators=[config.node(host).initiator_iqn], **more)

    def __enter__(self):
        if self.mode == "read+writeback":
            every = [config.node(h).initiator_iqn for h in self.hosts]
            ssh_session("storage", FLOOR_BASE["storage"].format(
                **dict(self.fields, initiators=every)))
            for host in self.hosts:
                ssh_session(host, FLOOR_BASE["host"].format(**self._fields(host)))
        return self

    def _floor(self, n):
        host = self.hosts[n % len(self.hosts)]
        return host, self._fields(host, n=n)

    def deploy(self, n):
        """Floor n's deploy (its storage session, then its host's); its seconds."""
        host, fields = self._floor(n)
        return (ssh_session("storage", self.scripts["storage"].format(**fields)) +
                ssh_session(host, self.scripts["host"].format(**fields)))

    def undo(self, n):
        host, fields = self._floor(n)
        ssh_session(host, self.scripts["undo_host"].format(**fields))
        ssh_session("storage", self.scripts["undo_storage"].format(**fields))

    def once(self):
        self.n += 1
        try:
            return self.deploy(self.n - 1)
        finally:
            self.undo(self.n - 1)

    def __exit__(self, *exc):
        if self.mode == "read+writeback":
            for host in self.hosts:
                ssh_session(host, FLOOR_BASE["undo_host"].format(**self._fields(host)))
            ssh_session("storage", FLOOR_BASE["undo_storage"].format(**self.fields))


def floor_seconds(mode, repeat):
    with Floor(mode) as floor:
        return statistics.median(floor.once() for _ in range(repeat))


def deploys_and_floors(counted, mode, first_vm, repeat):
    """deploy_seconds and floor_seconds in the same minutes: each round one steady deploy (and
    its terminate) and one floor, the order swapped every round, so that the machine's load,
    which drifts by 2x within minutes on these shared cores, weighs on both alike. Returns
    (deploy median, floor median, [[deploy, floor] per round]). Uses VMs first_vm ..
    first_vm + repeat."""
    counted.cloud.set_cache_mode(mode)
    _deploy(counted, first_vm)
    pairs = []
    try:
        with Floor(mode) as floor:
            for r, vm in enumerate(range(first_vm + 1, first_vm + 1 + repeat)):
                floored = floor.once() if r % 2 else None
                deployed = _deploy(counted, vm)
                _terminate(counted, vm)
                if floored is None:
                    floored = floor.once()
                pairs.append([round(deployed, 2), round(floored, 2)])
    finally:
        _terminate(counted, first_vm)
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            pairs)


def burst(counted, count, first_vm, single_seconds):
    cloud = counted.cloud
    cloud.set_cache_mode("read+writeback")
    vms = list(range(first_vm, first_vm + count))

    def host(vm):
        return "host1" if vm % 2 else "host2"

    for vm in vms:
        cloud.oned.put_xml(vm_xml(vm, hosts=(host(vm),), disks=(0,)))

    def clone(vm):
        started = time.monotonic()
        result = cloud.tm_action(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 "
                                 f"{_disk(host(vm), vm, 0)} {vm} 100")
        return result, time.monotonic() - started

    traced_before = len(counted.traced())
    with ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(clone, vms))
    node_calls = _percentiles(counted.traced()[traced_before:])
    failures = [r.info.strip() for r, _ in done if not r.success]
    p95 = _p95(s for _, s in done)
    missing = 0
    for node in ("host1", "host2"):
        stacks = cloud.lab.node_helper(node, "cache-status")["stacks"]
        missing += sum(1 for s in stacks if s["mode"] != "read+writeback")

    def terminate(vm):
        first = cloud.tm_action(f"DELETE iscsi_lvm {_disk(host(vm), vm, 0)} {vm} 100")
        second = cloud.tm_action(f"DELETE iscsi_lvm {host(vm)}:{SYSDIR}/{vm} {vm} 101")
        return first.success and second.success

    with ThreadPoolExecutor(PARALLEL) as pool:
        terminated = list(pool.map(terminate, vms))
    leftovers = leftover_count(cloud)
    return {"vms": count, "parallel": PARALLEL, "failures": len(failures),
            "terminate_failures": terminated.count(False),
            "failure_lines": failures[:5], "p95_seconds": round(p95, 2),
            "single_seconds": round(single_seconds, 2),
            "p95_over_single": round(p95 / single_seconds, 2),
            "read_layer_missing": missing, "leftovers": leftovers,
            "clone_node_call_seconds": node_calls}


def burst_floor(count, single_seconds):
    """The burst's floor: `count` floors of read+writeback, PARALLEL at a time on the two hosts
    as the burst's VMs are, each its own kernel commands by hand (the storage node's LVM
    serialises the thin snapshots of one VG whoever types them). Its p95 over one floor is what
    the lab's machines make of 15 deploys at once before any driver runs."""
    with Floor("read+writeback", hosts=("host2", "host1")) as floor:
        with ThreadPoolExecutor(PARALLEL) as pool:
            done = list(pool.map(lambda n: _attempt(floor.deploy, n), range(count)))
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda n: _attempt(floor.undo, n), range(count)))
    seconds = [s for s in done if not isinstance(s, str)]
    failures = [s for s in done if isinstance(s, str)]
    if not seconds:
        return {"failures": len(failures), "failure_lines": failures[:3]}
    p95 = _p95(seconds)
    return {"floors": count, "failures": len(failures), "failure_lines": failures[:3],
            "p95_seconds": round(p95, 2), "single_seconds": round(single_seconds, 2),
            "p95_over_single": round(p95 / single_seconds, 2)}


def _attempt(func, n):
    try:
        return func(n)
    except SystemExit as err:
        return str(err)[:300]


def leftover_count(cloud):
    vm_lvs = [lv for lv in cloud.lvs() if lv.startswith("vm-")]
    targets = [t for t in cloud.exports() if "vm-" in t["iqn"] or t["initiators"]]
    hosts = cloud.leftovers_on_hosts()
    return len(vm_lvs) + len(targets) + sum(len(v) for h in hosts.values() for v in h.values())


def lv_scale(counted, extra, first_vm, repeat, save):
    """Clone latency with `extra` more LVs in the VG, against the VG as it is (about 10)."""
    small = deploy_seconds(counted, "none", first_vm, repeat)
    # What grows with the number of LVs is LVM's metadata and every report of it: inactive thin
    # LVs (no VG space: the pool holds 90% of it) make the VG that large.
    script = "\n".join(f"lvcreate -q -y -an --type thin --thinpool tpool -V 4m "
                        f"-n filler-{i} {IMAGE_VG} >/dev/null 2>&1" for i in range(extra))
    counted.cloud.lab.sh("storage", script, timeout=7200)
    large = deploy_seconds(counted, "none", first_vm + repeat + 1, repeat)
    result = {"lvs_small": 10, "lvs_large": extra, "seconds_small": round(small, 2),
              "seconds_large": round(large, 2), "ratio": round(large / small, 2)}
    save(result)
    # In batches: one lvremove of 1,000 LVs ran the 768 MiB storage node out of memory.
    counted.cloud.lab.sh("storage", f"lvs --noheadings -o lv_name {IMAGE_VG} | grep filler- | "
                                    f"sed 's|^ *|{IMAGE_VG}/|' | xargs -r -n 50 lvremove -q -y "
                                    ">/dev/null", timeout=7200)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--lv-scale", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "deploy.json"))
    args = parser.parse_args()
    with api.booted(args.reuse):
        lab = LabSession(api)
        with tempfile.TemporaryDirectory() as workdir, OnedStandIn() as oned:
            cloud = Cloud(lab, oned, workdir)
            cloud.prepare_storage()
            cloud.load_datastores()
            cloud.import_image(64, "bench-deploy")
            mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock",
                                                           "01-ds-mkfs"))
            if not mkfs.success:
                raise SystemExit(f"image 1: {mkfs.info}")
            for name in ("WRITEBACK_CACHE_MB",):
                cloud.set_template_attr("datastore", 100, name, "64")
                cloud.set_template_attr("datastore", 101, name, "64")
            for host_id, node in enumerate(("host1", "host2")):
                oned.put_document(host_xml(host_id, node,
                                           initiator=config.node(node).initiator_iqn))
            counted = Counted(cloud, workdir)
            result = {"calls": {}, "deploy_seconds": {}, "floor_ratio": {}}

            def save():
                # After every stage: a stage that fails later loses nothing measured before it.
                Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            vm = 100
            for mode in MODES:
                result["calls"][mode] = measure_calls(counted, mode, vm)
                vm += 1
                save()
            result["floor_seconds"], result["floor_rounds"] = {}, {}
            for mode in MODES:
                # The base exists from the first clone: this is the steady-state deploy.
                try:
                    deployed, floor, pairs = deploys_and_floors(counted, mode, vm, args.repeat)
                except SystemExit as err:
                    # A floor script that fails costs its figure, not the stages after it.
                    result["floor_seconds"][mode] = f"failed: {err}"[:300]
                    vm += args.repeat + 1
                    result["deploy_seconds"][mode] = round(
                        deploy_seconds(counted, mode, vm, args.repeat), 2)
                    vm += args.repeat + 1
                    continue
                vm += args.repeat + 1
                result["deploy_seconds"][mode] = round(deployed, 2)
                result["floor_seconds"][mode] = round(floor, 2)
                result["floor_rounds"][mode] = pairs
                result["floor_ratio"][mode] = round(deployed / floor, 2)
                save()
            if args.burst:
                result["burst"] = burst(counted, args.burst, 1000,
                                        result["deploy_seconds"]["read+writeback"])
                save()
                floor = result["floor_seconds"]["read+writeback"]
                if isinstance(floor, float):
                    # Right after the burst: the same minutes' load on both.
                    result["burst"]["floor"] = burst_floor(args.burst, floor)
                    if "p95_seconds" in result["burst"]["floor"]:
                        result["burst"]["p95_over_floor_p95"] = round(
                            result["burst"]["p95_seconds"] /
                            result["burst"]["floor"]["p95_seconds"], 2)
                    save()
            if args.lv_scale:
                def keep(scale):
                    result["lv_scale"] = scale
                    save()
                lv_scale(counted, args.lv_scale, 2000, args.repeat, keep)
            save()
        print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
