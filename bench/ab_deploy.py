#!/usr/bin/env python3
"""A/B of the steady deploy of one disk (read+writeback, or --mode none) and of its terminate:
commit OLD against commit NEW on the same lab in the same minutes, deploys interleaved (OLD NEW,
NEW OLD, ...), the checkout switched between them (the lab's nodes run the checkout's code
through their /opt/tm_iscsi mount). For a shared, noisy machine, where two bench runs an hour
apart differ by a quarter.

Run it from a clone made for it (it checks out commits there), with that clone first on the
Python path:
    git clone . ../tm_iscsi-ab && cd ../tm_iscsi-ab
    PYTHONPATH=$PWD TM_ISCSI_LAB_ID=3 ../tm_iscsi/.venv/bin/python bench/ab_deploy.py OLD NEW
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "bench"))
from lab import api, config  # noqa: E402
from lab.session import LabSession  # noqa: E402
from harness.cloud import Cloud  # noqa: E402
from harness.oned import OnedStandIn  # noqa: E402
from harness.documents import host_xml  # noqa: E402
import bench_deploy as bd  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("old")
parser.add_argument("new")
parser.add_argument("--rounds", type=int, default=4)
parser.add_argument("--mode", default="read+writeback", choices=("none", "read+writeback"))
parser.add_argument("--out")
args = parser.parse_args()
OLD, NEW, ROUNDS = args.old, args.new, args.rounds


def checkout(commit):
    subprocess.run(["git", "-C", str(CHECKOUT), "checkout", "-q", commit], check=True)


times = {OLD: [], NEW: []}
terminates = {OLD: [], NEW: []}
with api.booted(False):
    lab = LabSession(api)
    with tempfile.TemporaryDirectory() as workdir, OnedStandIn() as oned:
        cloud = Cloud(lab, oned, workdir)
        cloud.prepare_storage(); cloud.load_datastores()
        cloud.import_image(64, "ab")
        for n in (100, 101):
            cloud.set_template_attr("datastore", n, "WRITEBACK_CACHE_MB", "64")
        for host_id, node in enumerate(("host1", "host2")):
            oned.put_document(host_xml(host_id, node, initiator=config.node(node).initiator_iqn))
        counted = bd.Counted(cloud, workdir)
        cloud.set_cache_mode(args.mode)
        checkout(NEW)
        bd._deploy(counted, 100)   # the holder: base logged in, read cache up
        vm = 101
        for r in range(ROUNDS):
            for c in ((OLD, NEW) if r % 2 == 0 else (NEW, OLD)):
                checkout(c)
                s = bd._deploy(counted, vm)
                begun = time.monotonic()
                bd._terminate(counted, vm)
                t = time.monotonic() - begun
                times[c].append(round(s, 2))
                terminates[c].append(round(t, 2))
                print(c, vm, round(s, 2), round(t, 2), flush=True)
                vm += 1
        checkout(NEW)
        bd._terminate(counted, 100)
out = {"old": OLD, "new": NEW, "mode": args.mode,
       "old_seconds": times[OLD], "new_seconds": times[NEW],
       "old_median": statistics.median(times[OLD]), "new_median": statistics.median(times[NEW]),
       "old_terminate_seconds": terminates[OLD], "new_terminate_seconds": terminates[NEW],
       "old_terminate_median": statistics.median(terminates[OLD]),
       "new_terminate_median": statistics.median(terminates[NEW])}
out["new_over_old"] = round(out["new_median"] / out["old_median"], 3)
out["terminate_new_over_old"] = round(out["new_terminate_median"] /
                                      out["old_terminate_median"], 3)
text = json.dumps(out, indent=2) + "\n"
if args.out:
    Path(args.out).write_text(text)
print(text)
