#!/usr/bin/env python3
"""Write-back checkpoints under load, in one run on the lab (issue 13): a 512 MiB clone in
read+writeback on host1, a latency writer (4 KiB O_DIRECT writes at random places of the first
128 MiB, one every 5 ms) running throughout, and once a minute a burst of 256 MiB of writes into
the write-back cache (dirty data, as a busy VM leaves it). Two phases of the same length and
load: without checkpoints (the baseline), then with a checkpoint after each burst.

Measured: per checkpoint, the dirty MiB at its start (cache-status) and the stall the writer
saw (its slowest write while the checkpoint ran); the writer's p99 write latency in each phase;
the storage node's share of each checkpoint (take + commit calls) and what a checkpoint costs
the thin pool: when it is cut (the snapshot alone), and after the VM rewrote 64 MiB it held
(the old blocks the checkpoint keeps).

    bench/bench_checkpoint.py [--reuse] [--minutes N]

Result: bench/results/checkpoint.json, keys `stall_s` {p50, p99, max}, `dirty_mib_at_start`
(per checkpoint), `write_p99_ms` {with, without, ratio}, `storage_cost` {seconds, pool_mib,
pinned_mib_after_64mib_rewrite}, `target_met` (p99 stall <= 1 s)."""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import api  # noqa: E402
from lab.session import LabSession  # noqa: E402
from harness.cloud import IMAGE_VG, SYSDIR, Cloud  # noqa: E402
from harness.documents import host_xml  # noqa: E402
from harness.oned import OnedStandIn  # noqa: E402

IMAGE_MIB = 512
DIRTY_MIB = 256
DISK = f"{SYSDIR}/0/disk.0"
LAT_FILE = "/root/tm-iscsi-bench-latency.json"
STOP_FILE = "/root/tm-iscsi-bench-stop"
WRITER = r"""
import json, mmap, os, random, sys, time
dev, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
buf.write(b"w" * 4096)
rng = random.Random(13)
rows, errors = [], 0
while not os.path.exists(stop):
    offset = rng.randrange(0, (128 << 20) // 4096) * 4096
    began = time.time()
    try:
        os.pwrite(fd, buf, offset)
    except OSError:
        errors += 1
    rows.append((began, time.time() - began))
    time.sleep(0.005)
with open(out + ".tmp", "w") as f:
    json.dump({"rows": [(round(b, 4), round(l, 5)) for b, l in rows], "errors": errors}, f)
os.rename(out + ".tmp", out)
"""


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _pool_used(cloud):
    return cloud.lab.node_helper("storage", "pool-status", "--vg", IMAGE_VG)["data_used_bytes"]


def _dirty_mib(cloud):
    stacks = cloud.lab.node_helper("host1", "cache-status")["stacks"]
    return sum(s.get("dirty_bytes") or 0 for s in stacks) / (1 << 20)


def _burst(cloud):
    cloud.lab.sh("host1", f"dd if=/dev/zero of={DISK} bs=1M seek=128 count={DIRTY_MIB} "
                          "oflag=direct conv=notrunc status=none", timeout=1800)


def _checkpoint(cloud):
    result = subprocess.run([sys.executable, "-m", "tm_iscsi.admin", "checkpoint", "0",
                             "--json"], env=dict(cloud.env), capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"checkpoint failed: {result.stderr.strip()}")
    return json.loads(result.stdout)["checkpoints"][0]


class Writer:
    def __init__(self, cloud):
        self.cloud = cloud

    def __enter__(self):
        self.cloud.lab.sh("host1", f"rm -f {STOP_FILE} {LAT_FILE}; cat > /root/writer.py; "
                                   f"nohup python3 /root/writer.py {DISK} {LAT_FILE} {STOP_FILE} "
                                   "</dev/null >/dev/null 2>&1 &", input=WRITER.encode())
        return self

    def __exit__(self, *exc):
        self.cloud.lab.sh("host1", f"touch {STOP_FILE}; for i in $(seq 100); do "
                                   f"[ -s {LAT_FILE} ] && break; sleep 0.2; done")
        doc = json.loads(self.cloud.lab.sh("host1", f"cat {LAT_FILE}"))
        self.rows, self.errors = doc["rows"], doc["errors"]
        return False


def _phase(cloud, minutes, with_checkpoints):
    """The writer for `minutes`, a burst each minute (and a checkpoint after it, if asked)."""
    checkpoints = []
    with Writer(cloud) as writer:
        for _ in range(minutes):
            began = time.monotonic()
            _burst(cloud)
            if with_checkpoints:
                dirty = _dirty_mib(cloud)
                start = time.time()
                report = _checkpoint(cloud)
                checkpoints.append({"dirty_mib": round(dirty, 1), "start": start,
                                    "end": time.time(), "report": report})
            time.sleep(max(0.0, 60 - (time.monotonic() - began)))
    return writer, checkpoints


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--minutes", type=int, default=6)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "checkpoint.json"))
    args = parser.parse_args()
    with api.booted(args.reuse):
        lab = LabSession(api)
        with tempfile.TemporaryDirectory() as workdir, OnedStandIn() as oned:
            cloud = Cloud(lab, oned, workdir)
            cloud.prepare_storage()
            cloud.load_datastores()
            cloud.set_cache_mode("read+writeback")
            cloud.import_image(IMAGE_MIB, "bench-checkpoint")
            oned.put_document(host_xml(0, "host1", vm_ids=(0,)))
            cloud.load_vm("04-vm-deploy", "01-tm-clone")
            from harness.documents import vm_xml
            oned.put_xml(vm_xml(0, hosts=("host1",), disks=(0,)))
            cloud.transfer(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 "
                           "host1:/var/lib/one//datastores/101/0/disk.0 0 100\n")

            without, _ = _phase(cloud, args.minutes, with_checkpoints=False)
            # What the first checkpoint of the 'with' phase drains must be what its burst
            # wrote: the baseline's dirty data goes first.
            _checkpoint(cloud)
            with_, cuts = _phase(cloud, args.minutes, with_checkpoints=True)

            stalls, slowest = [], []
            for cut in cuts:
                inside = [(began, lat) for began, lat in with_.rows
                          if began + lat >= cut["start"] and began <= cut["end"]]
                stalls.append(max((lat for _, lat in inside), default=0.0))
                # Where in the checkpoint the slowest writes were: seconds from its start, and
                # the cut (the storage node's snapshot) from its start.
                cut_at = cut["report"]["disks"][0]["cut_at"]
                slowest.append({"cut_after_s": round(cut_at - cut["start"], 2),
                                "writes": [[round(b - cut["start"], 2), round(lat, 3)] for b, lat
                                           in sorted(inside, key=lambda r: -r[1])[:4]]})
            # The same writer's slowest write per minute without checkpoints: what the lab's
            # own noise makes of a write, the baseline of the stall.
            minute_max = {}
            for began, lat in without.rows:
                key = int(began // 60)
                minute_max[key] = max(minute_max.get(key, 0.0), lat)
            baseline = sorted(minute_max.values())[1:-1] or sorted(minute_max.values())
            # The thin pool: a checkpoint of a clean disk, and after 64 MiB it held rewritten.
            lab.node_helper("host1", "stack-flush", "--name", "vm-0-disk-0")
            lab.node_helper("host1", "stack-writeback", "--name", "vm-0-disk-0")
            _checkpoint(cloud)
            # A second one of the same clean disk: replacing the first frees nothing, so what
            # the pool gains is the snapshot's own cost.
            before = _pool_used(cloud)
            _checkpoint(cloud)
            at_cut = _pool_used(cloud) - before
            lab.sh("host1", f"dd if=/dev/urandom of={DISK} bs=1M seek=128 count=64 "
                            "oflag=direct conv=notrunc status=none")
            lab.node_helper("host1", "stack-flush", "--name", "vm-0-disk-0")
            lab.node_helper("host1", "stack-writeback", "--name", "vm-0-disk-0")
            pinned = _pool_used(cloud) - before - at_cut

            p99_with = _percentile([lat for _, lat in with_.rows], 99) * 1000
            p99_without = _percentile([lat for _, lat in without.rows], 99) * 1000
            result = {
                "image_mib": IMAGE_MIB, "cache_mode": "read+writeback",
                "minutes_per_phase": args.minutes, "burst_mib_per_minute": DIRTY_MIB,
                "stall_s": {"p50": round(statistics.median(stalls), 3),
                            "p99": round(_percentile(stalls, 99), 3),
                            "max": round(max(stalls), 3)},
                "stall_per_checkpoint_s": [round(s, 3) for s in stalls],
                "slowest_writes_per_checkpoint": slowest,
                "baseline_slowest_write_per_minute_s": round(statistics.median(baseline), 3),
                "stall_over_baseline": round(_percentile(stalls, 99) /
                                             max(statistics.median(baseline), 1e-3), 2),
                "dirty_mib_at_start": [c["dirty_mib"] for c in cuts],
                "drained_mib": [c["report"]["disks"][0]["drained_mib"] for c in cuts],
                "checkpoint_seconds": [c["report"]["seconds"] for c in cuts],
                "write_p99_ms": {"with": round(p99_with, 2), "without": round(p99_without, 2),
                                 "ratio": round(p99_with / p99_without, 3)},
                "writes": {"with": len(with_.rows), "without": len(without.rows),
                           "failed": with_.errors + without.errors},
                "storage_cost": {
                    "seconds": round(statistics.median(
                        c["report"]["storage_seconds"] for c in cuts), 3),
                    "pool_mib": round(at_cut / (1 << 20), 1),
                    "pinned_mib_after_64mib_rewrite": round(pinned / (1 << 20), 1)},
            }
            result["target_met"] = result["stall_s"]["p99"] <= 1.0
            Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
