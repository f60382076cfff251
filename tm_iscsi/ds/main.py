"""Entry point of every DS action (`remotes/datastore/iscsi_lvm/<action>`): decode the driver
action (stdin since 6.8, argv before), run it, print its protocol line, or fail with one line."""
import os
import sys

from .. import log
from ..errors import DriverError
from ..node.errors import NodeError
from ..one.ds_action import read_ds_action
from ..one.errors import OneError
from . import actions

ACTIONS = {
    "cp": actions.cp, "mkfs": actions.mkfs, "rm": actions.rm, "stat": actions.stat,
    "clone": actions.clone, "monitor": actions.monitor, "snap_delete": actions.snap_delete,
    "snap_revert": actions.snap_revert, "snap_flatten": actions.snap_flatten,
    "export": actions.export,
}


def run(action, argv, stdin=None, ctx=None):
    from ..entry import guarded
    return guarded(f"datastore {action}", _run, action, argv, stdin, ctx)


def _run(action, argv, stdin, ctx):
    try:
        if action not in ACTIONS:
            raise DriverError(f"{action} is not supported by the iscsi_lvm datastore")
        if stdin is None and len(argv) < 2:
            from ..entry import stdin_bytes
            stdin = stdin_bytes()
        driver_action = read_ds_action(action, argv, stdin)
        if ctx is None:
            from ..context import ActionContext
            ctx = ActionContext()
        out = ACTIONS[action](ctx, driver_action)
    except (DriverError, OneError, NodeError) as err:
        log.error_line(f"{action}: {err}")
        return 1
    if out is not None:
        print(out)
    return 0


def main(argv=None):
    argv = sys.argv if argv is None else argv
    sys.exit(run(os.path.basename(argv[0]), argv[1:]))
