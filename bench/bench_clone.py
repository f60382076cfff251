#!/usr/bin/env python3
"""Clone cost vs image size: tm_iscsi's thin-snapshot clone against the full copy OpenNebula's
fs_lvm does (lvcreate + dd of the whole image), both measured in the same run on the lab's storage
node, for a 256 MiB and an 8 GiB image. Reports ratios (baseline / clone), not absolute times.

    bench/bench_clone.py [--reuse] [--repeat 3]

--reuse keeps a running lab (and leaves it up); otherwise the lab is booted and taken down."""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import api  # noqa: E402

VG = "vg-one-100"  # the lab storage node's node.conf VG: the helper touches no other
NODE = ["env", "PYTHONPATH=/opt/tm_iscsi", "/opt/tm_iscsi-venv/bin/python", "-m",
        "tm_iscsi.node"]
SIZES_MIB = (256, 8192)


def node(*args, timeout=1800):
    result = api.exec_("storage", [*NODE, *[str(a) for a in args]], timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"tm-iscsi-node {args[0]} failed: {result.stderr.decode().strip()}")
    return json.loads(result.stdout or b"{}")


def sh(script, timeout=1800):
    result = api.exec_("storage", ["bash", "-c", "set -euo pipefail\n" + script], timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"storage: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def timed(func):
    start = time.monotonic()
    func()
    return time.monotonic() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "clone.json"))
    args = parser.parse_args()
    with api.booted(args.reuse):
        sh(f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")
        node("pool-ensure", "--vg", VG)
        results = {}
        for size in SIZES_MIB:
            image = f"img-{size}"
            node("lv-create", "--vg", VG, "--lv", image, "--size-mib", size, "--max-fill", 99)
            # Every block of the image allocated and holding data, as a real image's would.
            sh(f"dd if=/dev/zero of=/dev/{VG}/{image} bs=1M count={size} oflag=direct status=none")
            clone_s, copy_s = [], []
            for i in range(args.repeat):
                clone_s.append(timed(lambda: node(
                    "lv-snapshot", "--vg", VG, "--origin", image, "--lv", f"vm-{size}-disk-{i}",
                    "--max-fill", 99)))
                # The helper makes LVs only under tm_iscsi's names: a VM disk is what a copy
                # would be.
                copy = f"vm-{size}-disk-{100 + i}"

                def full_copy():
                    node("lv-create", "--vg", VG, "--lv", copy, "--size-mib", size,
                         "--max-fill", 99)
                    node("lv-copy", "--vg", VG, "--src", image, "--dst", copy)
                copy_s.append(timed(full_copy))
                node("lv-remove", "--vg", VG, "--lv", f"vm-{size}-disk-{i}")
                node("lv-remove", "--vg", VG, "--lv", copy)
            results[size] = {
                "clone_s_median": round(statistics.median(clone_s), 2),
                "full_copy_s_median": round(statistics.median(copy_s), 2),
                "ratio_full_copy_over_clone": round(statistics.median(copy_s)
                                                    / statistics.median(clone_s), 1),
            }
            node("lv-remove", "--vg", VG, "--lv", image)
        small, big = results[SIZES_MIB[0]], results[SIZES_MIB[1]]
        report = {
            "sizes_mib": results,
            # O(1): the 8 GiB clone costs what the 256 MiB one does; the copy grows with size.
            "clone_8g_over_clone_256m": round(big["clone_s_median"] / small["clone_s_median"], 2),
            "copy_8g_over_copy_256m": round(big["full_copy_s_median"]
                                            / small["full_copy_s_median"], 1),
            "repeat": args.repeat,
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
