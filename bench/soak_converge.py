#!/usr/bin/env python3
"""Soak of the convergence tests: every TM action oned emits and every DS action, failed before
and after each of its node calls and re-run (tests/lab/test_driver_convergence.py and the
backup tests that converge prebackup, postbackup and restore), in every cache mode, and with
the node helpers killed -9 at seeded random moments inside the actions: the first `--kills`
failures of each action are each followed by a run that is killed, the first of them from the
state before the action. CI runs the same tests without kills, each in the modes it names
(none and read+writeback between them).

    bench/soak_converge.py [--modes all|m1,m2] [--kills 2] [--seed S] [--out FILE]
                                                        -> bench/results/converge-soak.json
One lab (TM_ISCSI_LAB_ID, default 0) and a private /var/lib/one, so a second part can run beside
it on another lab; each run is added to the file's "runs", with the totals over all of them."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from soak_results import append_run  # noqa: E402  (this script's folder)
from tests.shards import with_private_var_lib_one  # noqa: E402  (sys.path above)

TESTS = ["tests/lab/test_driver_convergence.py",
         "tests/lab/test_backup.py::test_a_live_backup_converges_after_a_failure_at_any_step",
         "tests/lab/test_backup.py::test_full_backup_of_a_powered_off_vm_keeps_no_point",
         "tests/lab/test_backup.py::"
         "test_full_and_incremental_chain_restores_every_point_with_dirty_data"]


def summary_of(junit_path, kill_log):
    tests = []
    for case in ET.parse(junit_path).iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        outcome = "skipped" if case.find("skipped") is not None else \
            ("failed" if failure is not None else "passed")
        entry = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                 "seconds": round(float(case.get("time", 0)))}
        if failure is not None:
            entry["failure"] = (failure.get("message") or "")[:400]
        tests.append(entry)
    kills = [json.loads(line) for line in kill_log.read_text().splitlines() if line.strip()]
    by_action = {}
    for kill in kills:
        counts = by_action.setdefault(kill["action"], {"kills": 0, "cut": 0})
        counts["kills"] += 1
        counts["cut"] += kill["cut"]
    return tests, {"kills": len(kills), "cut": sum(k["cut"] for k in kills),
                   "modes": sorted({k["mode"] for k in kills}), "by_action": by_action}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="all", help="all, or cache modes joined by commas")
    parser.add_argument("--kills", type=int, default=2, help="kill trials per action converged")
    parser.add_argument("--seed", default="converge", help="seed of the kill moments")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "converge-soak.json"))
    parser.add_argument("tests", nargs="*", default=TESTS,
                        help="pytest node ids (default: every convergence test)")
    args = parser.parse_args()
    lab_id = os.environ.get("TM_ISCSI_LAB_ID", "0")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        kill_log = Path(scratch) / "kills.jsonl"
        kill_log.touch()
        env = dict(os.environ, TM_ISCSI_CONVERGE_MODES=args.modes,
                   TM_ISCSI_CONVERGE_KILLS=str(args.kills), TM_ISCSI_KILL_SEED=args.seed,
                   TM_ISCSI_KILL_LOG=str(kill_log), TM_ISCSI_LAB_ID=lab_id,
                   TM_ISCSI_EXPORT_DIR=f"/var/tmp/tm_iscsi-export-soak{lab_id}")
        result = subprocess.run(with_private_var_lib_one(
            [str(REPO / "tests" / "run"), *args.tests, "-q", "-p", "no:cacheprovider",
             f"--junitxml={junit}"]), cwd=REPO, env=env, capture_output=True, text=True)
        lines = result.stdout.splitlines()
        tests, kills = summary_of(junit, kill_log) if junit.exists() else ([], {})
    doc = {"modes": args.modes, "kills_per_action": args.kills, "seed": args.seed,
           "selected": args.tests,
           "passed": result.returncode == 0 and bool(tests), "seconds":
           round(time.monotonic() - started), "kills": kills, "tests": tests,
           "summary": [line for line in lines if line.strip()][-1:]}
    if result.returncode != 0:
        doc["output"] = [line for line in lines if line.startswith(("E ", "FAILED"))][:40] or \
            (result.stdout + result.stderr).splitlines()[-20:]
    append_run(args.out, doc, lambda runs: {
        "tests_passed": sum(t["outcome"] == "passed" for r in runs for t in r["tests"]),
        "kills": sum(r["kills"].get("kills", 0) for r in runs),
        "kills_that_cut_an_action": sum(r["kills"].get("cut", 0) for r in runs)})
    print(json.dumps({k: v for k, v in doc.items() if k != "tests"}, indent=2))
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
