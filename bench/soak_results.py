"""The result file the soaks share a shape of: every run kept under "runs", with totals over all
of them. Parts of one soak may run side by side on two labs and end together."""
import fcntl
import json
from pathlib import Path


def append_run(out, doc, totals):
    """Add run `doc` to the file `out` and rewrite its totals: `totals(runs)` gives the soak's
    own, "passed" is common. A failed run stays on record; one marked "fixed_by" (by hand,
    naming the fix and the run that passed after it) no longer fails the total."""
    out = Path(out)
    # One read-modify-write of the file at a time.
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            runs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
        except ValueError:
            runs = []
        runs.append(doc)
        total = {"passed": all(r["passed"] or r.get("fixed_by") for r in runs), **totals(runs),
                 "runs": runs}
        out.write_text(json.dumps(total, indent=2) + "\n")
    out.with_suffix(".lock").unlink(missing_ok=True)
