#!/usr/bin/env python3
"""Soak of the kill test: the node helper killed (-9) at seeded random moments inside the deploy
and terminate transactions, `--trials` times per cache mode (200 in all by default), each re-run
required to converge with the right bytes and nothing left (tests/lab/test_driver_convergence.py,
`test_a_helper_killed_inside_a_transaction_converges_on_the_re_run`). CI runs 1 per mode.

    bench/soak_kill.py [--trials 100] [--seed S] [--out FILE]   -> bench/results/kill-soak.json
(each run is added to the file's "runs", with the totals over all of them)"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100, help="per cache mode (two modes)")
    parser.add_argument("--seed", default="kill",
                        help="seed of the kill moments; a soak in several runs gives each its own")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kill-soak.json"))
    args = parser.parse_args()
    started = time.monotonic()
    env = dict(os.environ, TM_ISCSI_KILL_TRIALS=str(args.trials), TM_ISCSI_KILL_SEED=args.seed)
    result = subprocess.run([str(REPO / "tests" / "run"), "tests/lab/test_driver_convergence.py",
                             "-q", "-k", "killed"], cwd=REPO, env=env, capture_output=True,
                            text=True)
    lines = result.stdout.splitlines()
    tail = [line for line in lines if line.strip()][-3:]
    doc = {"trials_per_mode": args.trials, "seed": args.seed, "modes": ["none", "read+writeback"],
           "kills": 2 * 2 * args.trials, "passed": result.returncode == 0,
           "seconds": round(time.monotonic() - started), "summary": tail}
    if result.returncode != 0:
        # What failed, as pytest said it: the run's output is not kept anywhere else.
        doc["failure"] = [line for line in lines if line.startswith(("E ", "FAILED"))][:40]
    # A soak may be run in parts (each with its own --seed): every run is kept, with the totals.
    out = Path(args.out)
    try:
        runs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
    except ValueError:
        runs = []
    runs.append(doc)
    total = {"trials_per_mode": sum(r["trials_per_mode"] for r in runs),
             "kills": sum(r["kills"] for r in runs),
             "passed": all(r["passed"] for r in runs), "runs": runs}
    out.write_text(json.dumps(total, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
