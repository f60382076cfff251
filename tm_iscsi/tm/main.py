"""Entry point of every TM action: `remotes/tm/iscsi_lvm/<action>` and the `tm_<action>` console
scripts both land here. Parses argv, runs the action, and turns any failure into the one stderr
line oned shows the user, with exit code 1."""
import os
import sys

from .. import log
from ..errors import DriverError
from ..one.errors import OneError
from ..one.tm_args import parse_tm_args, split_action_name
from ..node.errors import NodeError

# Actions that read a document from stdin: migrations (base64 VM), backups (plain VM XML).
_STDIN_ACTIONS = ("premigrate", "postmigrate", "failmigrate", "prebackup", "prebackup_live",
                  "postbackup", "postbackup_live")


def _handlers():
    from . import backup, context, disks, migrate, moves, restore, snapshots
    return {
        "restore": restore.restore,
        "prebackup": backup.prebackup, "prebackup_live": backup.prebackup,
        "postbackup": backup.postbackup, "postbackup_live": backup.postbackup,
        "clone": disks.clone, "ln": disks.ln, "mkimage": disks.mkimage, "mkswap": disks.mkswap,
        "delete": moves.delete, "mv": moves.mv, "mvds": disks.mvds, "cpds": disks.cpds,
        "resize": disks.resize, "context": context.context,
        "snap_create": snapshots.snap_create,
        "snap_create_live": snapshots.snap_create_live, "snap_delete": snapshots.snap_delete,
        "snap_revert": snapshots.snap_revert,
        "premigrate": migrate.premigrate, "postmigrate": migrate.postmigrate,
        "failmigrate": migrate.failmigrate,
        "monitor": _monitor,
    }


def _monitor(ctx, args):
    from ..one.ds_action import read_ds_action
    from .monitor import monitor_lines
    from ..entry import stdin_bytes
    from .. import dsconf
    stdin = None if args.legacy_payload else stdin_bytes()
    action = read_ds_action("monitor", [a for a in (args.legacy_payload, str(args.dsid)) if a],
                            stdin)
    ds = dsconf.from_datastore(action.datastore, ctx.settings)
    print("\n".join(monitor_lines(ctx, ds)))


def run(action, argv, stdin=None, ctx=None):
    """Run TM `action` with its positional `argv`. Returns the process exit code."""
    from ..entry import guarded
    return guarded(f"tm {action}", _run, action, argv, stdin, ctx)


def _run(action, argv, stdin, ctx):
    try:
        name, _system = split_action_name(action)
        handlers = _handlers()
        if name not in handlers:
            raise DriverError(f"unknown TM action {name!r}")
        args = parse_tm_args(action, argv)
        handler = handlers[name]
        if ctx is None:
            from ..context import ActionContext
            ctx = ActionContext()
        if name in _STDIN_ACTIONS:
            text = stdin if stdin is not None else _stdin_text(base64_only="backup" not in name)
            handler(ctx, args, stdin_xml=text)
        else:
            handler(ctx, args)
    except (DriverError, OneError, NodeError) as err:
        log.error_line(f"{action}: {err}")
        return 1
    return 0


def _stdin_text(base64_only=True):
    if sys.stdin is None or sys.stdin.isatty():
        return None
    from ..entry import stdin_bytes
    try:
        data = stdin_bytes()
    except OSError:
        return None   # no readable stdin: the action says what it needed
    if base64_only:
        # base64 is ASCII: any other byte makes the document unusable, not the action a
        # traceback.
        return data.decode("ascii", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError("the VM document on stdin is not UTF-8 text")


def main(argv=None):
    """`remotes/tm/iscsi_lvm/<action> ARGS`: the action is the script's own name."""
    argv = sys.argv if argv is None else argv
    action = os.path.basename(argv[0])
    if action.startswith("tm_"):
        action = action[3:]
    sys.exit(run(action, argv[1:]))


def console(action):
    def entry():
        sys.exit(run(action, sys.argv[1:]))
    return entry


tm_clone = console("clone")
tm_ln = console("ln")
tm_mkimage = console("mkimage")
tm_mkswap = console("mkswap")
tm_mv = console("mv")
tm_delete = console("delete")
