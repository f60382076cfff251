#!/usr/bin/env python3
"""Node-local caches, measured on the lab's real kernel.

    bench/bench_cache.py mechanism [--reuse]   # which read-cache mechanism serves VM 2 locally
    bench/bench_cache.py vms [--reuse] [--n 8]  # bytes over iSCSI per VM, cache none vs read
    bench/bench_cache.py flush [--reuse]       # flush throughput vs raw iSCSI writes; 4k latency

`mechanism` compares, for one 256 MiB image exported as a base LUN to host1, the bytes read over
iSCSI (sectors read of the base LUN's SCSI disk, /sys/block/sdX/stat) by a first and a second
"VM" doing the same read pattern through each candidate read cache:

  a  smq        dm-cache, smq policy, writethrough, over the base, as it is
  b  smq+warm   the same plus a warm-up: the regions VM 1 read are re-read until smq promotes them
  c1 replica    dm-clone from the base into a local LV with background hydration from creation
  c2 ondemand   dm-clone without hydration; the regions VM 1 read (dm-stats areas) are copied
                into the local LV after VM 1, before VM 2

Two patterns: a full sequential read (1 MiB direct reads) and a random 30% subset of the 64 KiB
blocks (the same subset, in the same order, for both VMs). The numbers go to
bench/results/cache-mechanism.json; the reasoning lives in bench/results/cache-mechanism.md.

--reuse keeps a running lab (and leaves it up). The lab is the one TM_ISCSI_LAB_ID selects.

The same file runs inside the host node (`guest-*` sub-commands) through the checkout the lab
mounts at /opt/tm_iscsi, so the measured code and the driver need no extra install.
"""
import argparse
import json
import mmap
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
VG = "vg-one-100"  # the lab storage node's node.conf VG: the helper touches no other
IMAGE_MIB = 256
REGION = 64 * 1024
HOST1 = "iqn.2026-11.lab.tm-iscsi:host1"
NODE = ["env", "PYTHONPATH=/opt/tm_iscsi", "/opt/tm_iscsi-venv/bin/python", "-m",
        "tm_iscsi.node"]
GUEST_SELF = "/opt/tm_iscsi/bench/bench_cache.py"
LOCAL_VG = "tmi-bench"


# -- inside the host node ----------------------------------------------------------------------

def sh(cmd, check=True):
    result = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"{cmd}: {result.stderr.strip()}")
    return result.stdout


def sectors_read(dev):
    name = os.path.basename(os.path.realpath(dev))
    with open(f"/sys/block/{name}/stat") as f:
        return int(f.read().split()[2])


def sectors_written(dev):
    name = os.path.basename(os.path.realpath(dev))
    with open(f"/sys/block/{name}/stat") as f:
        return int(f.read().split()[6])


def pattern_offsets(kind, size):
    if kind == "seq":
        return [(off, MIB) for off in range(0, size, MIB)]
    blocks = size // REGION
    chosen = random.Random(42).sample(range(blocks), int(blocks * 0.3))
    return [(b * REGION, REGION) for b in chosen]


def read_pattern(dev, offsets):
    """Direct reads, so the page cache of the host never hides a read from the counters."""
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MIB)
    start = time.monotonic()
    try:
        for off, length in offsets:
            view = memoryview(buf)[:length]
            os.preadv(fd, [view], off)
    finally:
        os.close(fd)
    return time.monotonic() - start


def dm(*args):
    return sh(["dmsetup", *args])


def status_fields(name):
    return dm("status", name).split()


def lv(name, size_mib):
    sh(["lvcreate", "-q", "-y", "-Zy", "-Wy", "-L", f"{size_mib}m", "-n", name, LOCAL_VG])
    return f"/dev/{LOCAL_VG}/{name}"


def cleanup():
    for name in ("bench-rc",):
        if subprocess.run(["dmsetup", "info", name], capture_output=True).returncode == 0:
            dm("remove", "--retry", name)
    for name in ("bench-data", "bench-meta"):
        subprocess.run(["lvremove", "-q", "-y", f"{LOCAL_VG}/{name}"], capture_output=True)


def wait_idle_promotions(name, rounds=8):
    """smq migrates only while the origin is idle (1 s without I/O); wait until promotions stop."""
    last = -1
    for _ in range(rounds):
        time.sleep(1.5)
        promotions = int(status_fields(name)[12])
        if promotions == last:
            break
        last = promotions
    return last


def hydration(name):
    fields = status_fields(name)
    done, total = fields[6].split("/")
    return int(done), int(total)


def stats_areas_read(name):
    """Areas (region-sized) of the device with at least one read since the stats were made.
    Through the kernel's message (`dmsetup stats print` lists some regions twice)."""
    out = dm("message", name, "0", "@stats_print", "0")
    areas = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6 or "+" not in parts[0]:
            continue
        start, length = (int(x) for x in parts[0].split("+"))
        if int(parts[1]) > 0:
            areas.append((start * 512, length * 512))
    return areas


def warm_regions(dev, areas):
    """Copy regions of a dm-clone onto its destination: a read (from the source while the region
    is not hydrated) and the same bytes written back as whole regions, which dm-clone marks
    hydrated without copying from the source again. Only ever writes the clone device, whose
    writes dm-clone sends to the destination: the source is opened read-only by the kernel."""
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, MIB)
    try:
        runs = []
        for start, length in sorted(areas):
            if runs and runs[-1][0] + runs[-1][1] == start and runs[-1][1] + length <= MIB:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((start, length))
        for start, length in runs:
            view = memoryview(buf)[:length]
            os.preadv(fd, [view], start)
            os.pwritev(fd, [view], start)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(runs)


def guest_mechanism(base, mechanism, kind):
    size = int(sh(["blockdev", "--getsize64", base]).strip())
    sectors = size // 512
    offsets = pattern_offsets(kind, size)
    cleanup()
    data = lv("bench-data", size // MIB)
    meta = lv("bench-meta", 8)
    result = {"mechanism": mechanism, "pattern": kind, "image_bytes": size,
              "pattern_bytes": sum(length for _, length in offsets)}
    name = "bench-rc"
    dev = f"/dev/mapper/{name}"
    t0 = sectors_read(base)
    if mechanism in ("smq", "smq+warm"):
        # Cache as large as the image, 64 KiB blocks: capacity never limits promotion.
        threshold = ["2", "migration_threshold", "65536"] if mechanism == "smq+warm" else ["0"]
        dm("create", name, "--table", f"0 {sectors} cache {meta} {data} {base} 128 1 "
           f"writethrough smq {' '.join(threshold)}")
    elif mechanism == "replica":
        dm("create", name, "--table", f"0 {sectors} clone {meta} {data} {base} 128 0 4 "
           "hydration_threshold 512 hydration_batch_size 16")
    elif mechanism == "ondemand":
        dm("create", name, "--table", f"0 {sectors} clone {meta} {data} {base} 128 1 "
           "no_hydration")
        dm("message", name, "0", "@stats_create", "-", str(REGION // 512), "bench")
    else:
        raise SystemExit(f"unknown mechanism {mechanism}")
    sh(["udevadm", "settle"])
    t_created = sectors_read(base)
    result["vm1_seconds"] = read_pattern(dev, offsets)
    t_vm1 = sectors_read(base)
    warm = {}
    start = time.monotonic()
    if mechanism == "smq":
        warm["promotions"] = wait_idle_promotions(name)
    elif mechanism == "smq+warm":
        passes = 0
        promoted = wait_idle_promotions(name)
        while passes < 3 and promoted < len(offsets) * (offsets[0][1] // REGION) * 0.95:
            read_pattern(dev, offsets)
            passes += 1
            promoted = wait_idle_promotions(name)
        warm.update(passes=passes, promotions=promoted)
    elif mechanism == "replica":
        while True:
            done, total = hydration(name)
            if done == total:
                break
            time.sleep(0.2)
        warm["hydrated_regions"] = done
    elif mechanism == "ondemand":
        areas = stats_areas_read(name)
        warm["regions"] = len(areas)
        warm["runs"] = warm_regions(dev, areas)
        warm["hydrated_regions"] = hydration(name)[0]
    result["warm_seconds"] = time.monotonic() - start
    result["warm"] = warm
    t_warm = sectors_read(base)
    result["vm2_seconds"] = read_pattern(dev, offsets)
    t_vm2 = sectors_read(base)
    result["status_after"] = dm("status", name).strip()
    result["base_sectors_written"] = sectors_written(base)
    cleanup()
    result.update({
        "setup_bytes": (t_created - t0) * 512,
        "vm1_bytes": (t_vm1 - t_created) * 512,
        "warm_bytes": (t_warm - t_vm1) * 512,
        "vm2_bytes": (t_vm2 - t_warm) * 512,
        "total_bytes": (t_vm2 - t0) * 512,
    })
    result["vm2_over_vm1"] = round(result["vm2_bytes"] / max(1, result["vm1_bytes"]), 4)
    print(json.dumps(result))


def iscsi_sectors_read():
    """Sectors read from every SCSI disk of the host: in the lab those are all iSCSI LUNs."""
    total = 0
    for name in os.listdir("/sys/block"):
        if name.startswith("sd"):
            with open(f"/sys/block/{name}/stat") as f:
                total += int(f.read().split()[2])
    return total


def guest_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("--base")
    p.add_argument("--dev")
    p.add_argument("--mechanism")
    p.add_argument("--pattern")
    args = p.parse_args(argv)
    if args.what == "guest-read":
        before = iscsi_sectors_read()
        size = int(sh(["blockdev", "--getsize64", args.dev]).strip())
        seconds = read_pattern(args.dev, pattern_offsets(args.pattern, size))
        print(json.dumps({"seconds": seconds,
                          "iscsi_bytes": (iscsi_sectors_read() - before) * 512}))
        return
    if args.what == "guest-iscsi-bytes":
        print(iscsi_sectors_read() * 512)
        return
    if subprocess.run(["vgs", LOCAL_VG], capture_output=True).returncode != 0:
        sh(["vgcreate", "-q", LOCAL_VG, "/dev/ubdb"])
    if args.what == "guest-mechanism":
        guest_mechanism(args.base, args.mechanism, args.pattern)


# -- on the machine ----------------------------------------------------------------------------

def _api():
    sys.path.insert(0, str(REPO))
    from lab import api
    return api


def node(api, host, *args, timeout=1800, input=None):
    result = api.exec_(host, [*NODE, *[str(a) for a in args]], timeout=timeout, input=input)
    if result.returncode != 0:
        raise SystemExit(f"{host}: tm-iscsi-node {args[0]} failed: "
                         f"{result.stderr.decode().strip()}")
    return json.loads(result.stdout or b"{}")


def run(api, host, script, timeout=1800):
    result = api.exec_(host, ["bash", "-c", "set -euo pipefail\n" + script], timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{host}: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def lab_up(api, reuse):
    up = all(r["state"] == "up" for r in api.status())
    if not (reuse and up):
        if any(r["state"] != "down" for r in api.status()):
            api.down()
        api.up()
    api.reset()


def attach_lun(api, lv):
    exported = node(api, "storage", "export", "--vg", VG, "--lv", lv, "--initiator", HOST1)
    return node(api, "host1", "attach", "--portal", "storage", "--iqn", exported["iqn"],
                "--serial", exported["serial"])["stable_path"]


def storage_image(api):
    run(api, "storage", f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")
    node(api, "storage", "pool-ensure", "--vg", VG)
    node(api, "storage", "lv-create", "--vg", VG, "--lv", "img-1", "--size-mib", IMAGE_MIB)
    # Random bytes in every block: a real image's blocks are allocated and hold data.
    run(api, "storage", f"dd if=/dev/urandom of=/dev/{VG}/img-1 bs=1M count={IMAGE_MIB} "
                        "oflag=direct status=none")
    node(api, "storage", "lv-snapshot", "--vg", VG, "--origin", "img-1", "--lv", "img-1-base")
    return attach_lun(api, "img-1-base")


def cmd_mechanism(args):
    api = _api()
    lab_up(api, args.reuse)
    try:
        base = storage_image(api)
        rows = []
        for pattern in ("seq", "rand30"):
            for mechanism in ("smq", "smq+warm", "replica", "ondemand"):
                out = run(api, "host1", f"python3 {GUEST_SELF} guest-mechanism --base {base} "
                                        f"--mechanism {mechanism} --pattern {pattern}")
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(f"{pattern:7} {mechanism:9} vm1 {row['vm1_bytes'] / MIB:7.1f} MiB  "
                      f"warm {row['warm_bytes'] / MIB:7.1f} MiB  vm2 {row['vm2_bytes'] / MIB:7.1f}"
                      f" MiB  ({row['vm2_over_vm1']:.1%})  total {row['total_bytes'] / MIB:7.1f}"
                      f" MiB  vm1 {row['vm1_seconds']:.1f}s warm {row['warm_seconds']:.1f}s "
                      f"vm2 {row['vm2_seconds']:.1f}s", flush=True)
        _write(args, "cache-mechanism.json", {"image_mib": IMAGE_MIB, "region_bytes": REGION,
                                              "rows": rows})
    finally:
        if not args.reuse:
            api.down()


def new_disk(api, name, map_too=True, size_mib=None):
    """A clone of the image (and its map LV) exported and attached to host1."""
    grow = ["--size-mib", size_mib] if size_mib else []
    node(api, "storage", "lv-snapshot", "--vg", VG, "--origin", "img-1", "--lv", name, *grow)
    devs = {"clone": attach_lun(api, name)}
    if map_too:
        node(api, "storage", "lv-create", "--vg", VG, "--lv", f"{name}-map", "--size-mib", 4)
        devs["map"] = attach_lun(api, f"{name}-map")
    return devs


def guest_read(api, dev, pattern):
    out = run(api, "host1", f"python3 {GUEST_SELF} guest-read --dev {dev} --pattern {pattern}")
    return json.loads(out.strip().splitlines()[-1])


def iscsi_bytes(api):
    return int(run(api, "host1", f"python3 {GUEST_SELF} guest-iscsi-bytes").strip())


def cmd_vms(args):
    """N VMs of one image on one host, one after the other (as a scale-out deploys them), each
    reading the boot-like pattern: bytes read over iSCSI per VM with cache none and read."""
    api = _api()
    lab_up(api, args.reuse)
    try:
        base = storage_image(api)
        node(api, "host1", "cache-init", "--device", "/dev/ubdb")
        disks = [new_disk(api, f"vm-{i}-disk-0") for i in range(args.n)]
        rows = {"none": [], "read": []}
        for i, devs in enumerate(disks):
            read = guest_read(api, devs["clone"], args.pattern)
            rows["none"].append({"vm": i + 1, "iscsi_bytes": read["iscsi_bytes"],
                                 "seconds": round(read["seconds"], 2)})
        for i, devs in enumerate(disks):
            before = iscsi_bytes(api)
            start = time.monotonic()
            out = node(api, "host1", "stack-assemble", "--name", f"vm-{i}-disk-0", "--mode",
                       "read", "--clone-dev", devs["clone"], "--base-key", "img-1@1",
                       "--base-dev", base, "--map-dev", devs["map"])
            assemble_s = time.monotonic() - start
            deploy = iscsi_bytes(api) - before
            read = guest_read(api, out["top"], args.pattern)
            warmed = out["layers"]["read_cache"]["warmed"] or {}
            rows["read"].append({"vm": i + 1, "iscsi_bytes": read["iscsi_bytes"],
                                 "seconds": round(read["seconds"], 2),
                                 "deploy_iscsi_bytes": deploy,
                                 "warmed_bytes": warmed.get("bytes", 0),
                                 "assemble_seconds": round(assemble_s, 2)})
        for mode in ("none", "read"):
            for row in rows[mode]:
                print(f"{mode:5} vm {row['vm']}: {row['iscsi_bytes'] / MIB:7.1f} MiB over iSCSI "
                      f"reading" + (f", {row['deploy_iscsi_bytes'] / MIB:6.1f} MiB at deploy "
                                    f"(warm-up)" if mode == "read" else ""), flush=True)
        first = rows["read"][0]["iscsi_bytes"]
        summary = {}
        for n in (1, 2, 4, 8):
            if n > args.n:
                break
            summary[n] = {
                "none_total_bytes": sum(r["iscsi_bytes"] for r in rows["none"][:n]),
                "read_total_bytes": sum(r["iscsi_bytes"] + r["deploy_iscsi_bytes"]
                                        for r in rows["read"][:n]),
                "read_max_later_vm_over_first": max(
                    [r["iscsi_bytes"] / first for r in rows["read"][1:n]] or [0.0])}
        _write(args, "cache-vms.json", {"image_mib": IMAGE_MIB, "pattern": args.pattern,
                                        "rows": rows, "by_n": summary})
    finally:
        if not args.reuse:
            api.down()


def _fio_4k(api, dev):
    # The real node: fio reads ':' in a file name (by-path names are full of them) as a list.
    out = run(api, "host1", f"fio --name=lat --filename=$(readlink -f {dev}) --rw=randwrite "
                            "--bs=4k --direct=1 --iodepth=1 --ioengine=psync --size=64m --runtime=8 "
                            "--time_based --randseed=7 --output-format=json")
    job = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return {"iops": round(job["iops"], 1), "clat_mean_us": round(job["clat_ns"]["mean"] / 1000, 1),
            "clat_p99_us": round(job["clat_ns"]["percentile"]["99.000000"] / 1000, 1)}


def cmd_flush(args):
    """Flush throughput of the write-back cache against raw iSCSI writes to a LUN of the same
    storage node, in the same run; and 4 KiB random-write latency per cache mode."""
    api = _api()
    lab_up(api, args.reuse)
    try:
        base = storage_image(api)
        node(api, "host1", "cache-init", "--device", "/dev/ubdb")
        mib = args.mib
        # Disks larger than the image: room for two rounds of writes.
        raw = new_disk(api, "vm-990-disk-0", map_too=False, size_mib=2 * mib + 64)
        out = run(api, "host1", f"dd if=/dev/zero of={raw['clone']} bs=1M count={mib} "
                                "oflag=direct conv=fsync 2>&1 | tail -1")
        start = time.monotonic()
        run(api, "host1", f"dd if=/dev/zero of={raw['clone']} bs=1M count={mib} seek={mib} "
                          "oflag=direct conv=fsync status=none")
        raw_s = time.monotonic() - start
        disk = new_disk(api, "vm-991-disk-0", map_too=False, size_mib=2 * mib + 64)
        top = node(api, "host1", "stack-assemble", "--name", "vm-991-disk-0", "--mode",
                   "writeback", "--clone-dev", disk["clone"], "--wb-size-mib",
                   2 * mib)["top"]
        run(api, "host1", f"dd if=/dev/zero of={top} bs=1M count={mib} seek={mib} "
                          "oflag=direct conv=fsync status=none")
        dirty = node(api, "host1", "cache-status")["stacks"][0]["dirty_blocks"]
        start = time.monotonic()
        flushed = node(api, "host1", "stack-flush", "--name", "vm-991-disk-0")
        flush_s = time.monotonic() - start
        result = {"mib": mib, "raw_write_seconds": round(raw_s, 2),
                  "raw_write_mib_per_s": round(mib / raw_s, 1), "dirty_blocks": dirty,
                  "flush": flushed, "flush_command_seconds": round(flush_s, 2),
                  "flush_command_mib_per_s": round(mib / flush_s, 1), "first_dd": out.strip()}
        print(f"raw iSCSI write {result['raw_write_mib_per_s']} MiB/s; flush of {dirty} dirty "
              f"blocks {flushed['mib_per_s']} MiB/s in the cache, "
              f"{result['flush_command_mib_per_s']} MiB/s for the whole command", flush=True)
        node(api, "host1", "stack-teardown", "--name", "vm-991-disk-0", "--flush")

        # 4 KiB random writes, queue depth 1: what a guest's small synchronous writes see.
        lat = {"none": _fio_4k(api, raw["clone"])}
        node(api, "host1", "stack-assemble", "--name", "vm-991-disk-0", "--mode", "writeback",
             "--clone-dev", disk["clone"], "--wb-size-mib", 256)
        lat["writeback"] = _fio_4k(api, "/dev/mapper/tmi-wb-vm-wb-disk-0")
        node(api, "host1", "stack-teardown", "--name", "vm-991-disk-0", "--flush")
        rw = new_disk(api, "vm-992-disk-0")
        top = node(api, "host1", "stack-assemble", "--name", "vm-992-disk-0", "--mode",
                   "read+writeback", "--clone-dev", rw["clone"], "--base-key", "img-1@1",
                   "--base-dev", base, "--map-dev", rw["map"], "--wb-size-mib", 256)["top"]
        lat["read+writeback"] = _fio_4k(api, top)
        node(api, "host1", "stack-teardown", "--name", "vm-992-disk-0", "--flush")
        for mode, row in lat.items():
            print(f"4k randwrite {mode:15} {row['iops']:8.1f} IOPS, mean {row['clat_mean_us']} "
                  f"us, p99 {row['clat_p99_us']} us", flush=True)
        result["randwrite_4k"] = lat
        _write(args, "cache-flush.json", result)
    finally:
        if not args.reuse:
            api.down()


def _write(args, name, doc):
    path = Path(args.out or REPO / "bench" / "results" / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def main():
    if len(sys.argv) > 1 and sys.argv[1].startswith("guest-"):
        return guest_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("mechanism", "vms", "flush"))
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--n", type=int, default=8, help="vms: how many VMs")
    parser.add_argument("--pattern", default="rand30", choices=("seq", "rand30"))
    parser.add_argument("--mib", type=int, default=512, help="flush: MiB written")
    args = parser.parse_args()
    {"mechanism": cmd_mechanism, "vms": cmd_vms, "flush": cmd_flush}[args.what](args)


if __name__ == "__main__":
    main()
