"""`python -m tm_iscsi.ds ACTION ARGS...` (what remotes/datastore/iscsi_lvm/<action> runs)."""
import sys

from .main import run

if len(sys.argv) < 2:
    print("usage: python -m tm_iscsi.ds ACTION ARGS...", file=sys.stderr)
    sys.exit(2)
sys.exit(run(sys.argv[1], sys.argv[2:]))
