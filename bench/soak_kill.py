#!/usr/bin/env python3
"""Soak of the kill test: the node helper killed (-9) at seeded random moments inside the deploy
and terminate transactions, `--trials` times per cache mode, each re-run required to converge
with the right bytes and nothing left (tests/lab/test_driver_convergence.py,
`test_a_helper_killed_inside_a_transaction_converges_on_the_re_run`). CI runs 1 per mode.

    bench/soak_kill.py [--trials 100] [--seed S] [--out FILE]   -> bench/results/kill-soak.json
One lab (TM_ISCSI_LAB_ID, default 0) and a private /var/lib/one, so a second part (its own
--seed) can run beside it on another lab; each run is added to the file's "runs", with the
totals over all of them. A trial is one deploy and one terminate, each killed once."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from soak_results import append_run  # noqa: E402  (this script's folder)
from tests.shards import with_private_var_lib_one  # noqa: E402  (sys.path above)

MODES = ["none", "read+writeback"]
# pytest's per-test limit (pyproject: 1,800 s) scaled to the trials: a trial takes 15-50 s in the
# lab, more with other labs on the same cores (50 trials hit 1,800 s with two labs running).
SECONDS_PER_TRIAL = 120


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100, help="per cache mode")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"cache modes joined by commas (default {','.join(MODES)})")
    parser.add_argument("--seed", default="kill",
                        help="seed of the kill moments; a soak in several runs gives each its own")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kill-soak.json"))
    args = parser.parse_args()
    lab_id = os.environ.get("TM_ISCSI_LAB_ID", "0")
    started = time.monotonic()
    # The code the soak ran (the checkout may move on while it runs).
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        kill_log = Path(scratch) / "kills.jsonl"
        kill_log.touch()
        modes = [mode for mode in args.modes.split(",") if mode]
        env = dict(os.environ, TM_ISCSI_KILL_TRIALS=str(args.trials), TM_ISCSI_KILL_SEED=args.seed,
                   TM_ISCSI_CONVERGE_MODES=",".join(modes),
                   TM_ISCSI_KILL_LOG=str(kill_log), TM_ISCSI_LAB_ID=lab_id,
                   TM_ISCSI_EXPORT_DIR=f"/var/tmp/tm_iscsi-export-soak{lab_id}")
        result = subprocess.run(with_private_var_lib_one(
            [str(REPO / "tests" / "run"), "tests/lab/test_driver_convergence.py", "-q",
             "-p", "no:cacheprovider", "-k", "killed",
             f"--timeout={600 + SECONDS_PER_TRIAL * args.trials}"]), cwd=REPO, env=env,
            capture_output=True, text=True)
        kills = [json.loads(line) for line in kill_log.read_text().splitlines() if line.strip()]
    lines = result.stdout.splitlines()
    tail = [line for line in lines if line.strip()][-3:]
    failed = {mode for mode in modes for line in lines
              if line.startswith(("FAILED", "ERROR")) and line.rstrip().endswith(f"[{mode}]")}
    doc = {"trials_per_mode": args.trials, "seed": args.seed, "modes": modes, "commit": commit,
           "kills": len(kills), "kills_that_cut_an_action": sum(k["cut"] for k in kills),
           "passed": result.returncode == 0, "seconds": round(time.monotonic() - started),
           "modes_passed": [] if "passed" not in " ".join(tail) else
           [mode for mode in modes if mode not in failed],
           "summary": tail}
    if result.returncode != 0:
        # What failed, as pytest said it: the run's output is not kept anywhere else.
        doc["failure"] = [line for line in lines if line.startswith(("E ", "FAILED"))][:40] or \
            (result.stdout + result.stderr).splitlines()[-20:]
    append_run(args.out, doc, lambda runs: {
        "trials_passed": {mode: sum(r["trials_per_mode"] for r in runs
                                    if mode in r.get("modes_passed",
                                                     r["modes"] if r["passed"] else []))
                          for mode in MODES},
        "kills": sum(r["kills"] for r in runs)})
    print(json.dumps(doc, indent=2))
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
