"""`tm-iscsi-node <command> [options]`: dispatch, JSON output and the error contract.

Commands register themselves with `command()` in the cmd_* modules; this module only knows how to
call them and how to report."""
import argparse
import importlib
import json
import sys
import time

from .. import protocol
from . import deadline
from . import run as _run
from .errors import NodeError, NodeUsageError

_COMMANDS = {}


def command(name, help):
    """Register `func(args) -> dict` as sub-command `name`; `func.configure(parser)` adds options."""
    def register(func):
        _COMMANDS[name] = (func, help)
        return func
    return register


def checked_command(name, help):
    """command(), with the failures of the command's environment (a device that vanished, a
    configfs write LIO refused) turned into one-line errors (run.one_line_errors)."""
    def register(func):
        return command(name, help)(_run.one_line_errors(name, func))
    return register


def request_option(p):
    """The one option of a transaction (tm_iscsi.protocol): its request as JSON; an action whose
    disks are in several datastores of the node gives one per datastore, in one call."""
    p.add_argument("--request", required=True, action="append",
                   help="the transaction as JSON (protocol.py); repeated: run in order")


def decode_request(cls, text):
    """The request as `cls`; anything that is not the protocol is a usage error (exit 2)."""
    try:
        return protocol.decode(cls, text)
    except protocol.ProtocolError as err:
        raise NodeUsageError(str(err))


def checked_requests(cls, texts, check):
    """Every --request decoded and checked (`check`) before anything changes: a malformed later
    request changes nothing."""
    requests = [decode_request(cls, text) for text in texts]
    for request in requests:
        check(request)
    return requests


def answer(answers):
    """One request answers as itself, several as {"results": [answer, ...]}."""
    return answers[0] if len(answers) == 1 else {"results": answers}


def each_request(cls, texts, check, run, prepare=None):
    """checked_requests, then `prepare` once and `run` for each request in the order given."""
    requests = checked_requests(cls, texts, check)
    if prepare is not None:
        prepare()
    return answer([run(request) for request in requests])


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise NodeUsageError(f"{self.prog}: {message}")


# Which module registers each command. Every node call is a fresh Python process, and inside a
# slow VM importing all of them costs a third of a second a call: only the module of the command
# being run is imported (a unit test checks this table against what the modules register).
MODULE_OF = {
    **dict.fromkeys(("cache-init", "stack-assemble", "stack-flush", "stack-writeback",
                     "stack-teardown",
                     "cache-status", "cache-warm", "activate"), "cmd_cache"),
    **dict.fromkeys(("initiator", "sessions", "attach", "detach"), "cmd_host"),
    **dict.fromkeys(("pool-ensure", "pool-status", "lv-create", "lv-snapshot", "lv-remove",
                     "lv-resize", "lv-revert", "lv-info", "lv-list", "lv-write", "lv-read", "lv-copy",
                     "lv-mkfs", "export", "unexport", "exports", "fence"), "cmd_storage"),
    "lv-tag": "cmd_tags",
    **dict.fromkeys(("storage-attach", "storage-release"), "txn_storage"),
    **dict.fromkeys(("host-attach", "host-detach"), "txn_host"),
    **dict.fromkeys(("backup-snapshot", "backup-release"), "txn_backup"),
    **dict.fromkeys(("backup-quiesce", "backup-write"), "cmd_backup"),
    **dict.fromkeys(("checkpoint-take", "checkpoint-commit", "host-lost"), "txn_checkpoint"),
    **dict.fromkeys(("checkpoint-drain", "checkpoint-resume"), "cmd_checkpoint"),
    **dict.fromkeys(("dir-pack", "dir-unpack", "file-put", "path-remove"), "cmd_vmdir"),
    **dict.fromkeys(("image-extract", "image-overlay"), "cmd_fsimage"),
}


# `tm-iscsi-node [--budget S] --args-on-stdin COMMAND`: the command's arguments come later, as
# the first line of stdin (a JSON list of words), so that the caller can start the call (ssh,
# sudo, Python, the command's imports) before it knows them; the rest of stdin is the command's.
ARGS_ON_STDIN = "--args-on-stdin"
_ARGS_LINE_LIMIT = 8 << 20


def _global_words(words):
    """How many of `words` are global options (before the command)."""
    count = 0
    while count < len(words) and words[count] in ("--budget", ARGS_ON_STDIN):
        count += 2 if words[count] == "--budget" else 1
    return count


def _args_from_stdin():
    raw = getattr(sys.stdin, "buffer", sys.stdin)
    line = raw.readline(_ARGS_LINE_LIMIT)
    if isinstance(line, bytes):
        line = line.decode(errors="replace")
    if not line.strip():
        raise NodeUsageError(f"{ARGS_ON_STDIN}: no arguments on stdin (the caller stopped before "
                             "sending them; nothing was changed)")
    try:
        words = json.loads(line)
    except ValueError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise NodeUsageError(f"{ARGS_ON_STDIN}: the first line of stdin is not a JSON list of "
                             "words")
    return words


def _load_commands(argv):
    # Storage commands need rtslib_fb only when they run; hosts do not have it.
    words = list(argv)
    words = words[_global_words(words):]
    wanted = next((a for a in words if not a.startswith("-")), None)
    modules = {MODULE_OF[wanted]} if wanted in MODULE_OF else set(MODULE_OF.values())
    for module in sorted(modules):
        importlib.import_module(f"{__package__}.{module}")


def _budget(value):
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"--budget {value!r} is not 1-86400 seconds")
    return seconds


def build_parser(argv=None):
    _load_commands(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="tm-iscsi-node", description="tm_iscsi node helper")
    parser.add_argument("--budget", type=_budget, metavar="SECONDS",
                        help="the caller's remaining time: stop in time, at a re-runnable point")
    parser.add_argument(ARGS_ON_STDIN, action="store_true",
                        help="the command's arguments are the first line of stdin, a JSON list")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (func, help_text) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text)
        configure = getattr(func, "configure", None)
        if configure:
            configure(p)
    return parser


def main(argv=None):
    from ..entry import guarded
    return guarded("tm-iscsi-node", _main, argv)


def _main(argv):
    started = time.monotonic()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(words)
        if ARGS_ON_STDIN in words[:_global_words(words)]:
            # The command's module is imported: what the caller's wait for the words overlaps.
            words += _args_from_stdin()
        args = parser.parse_args(words)
        if args.budget:
            # From the call's start: the budget covers the wait for the words too.
            deadline.start(args.budget, since=started)
        func, _ = _COMMANDS[args.command]
        result = func(args)
    except NodeError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is not None:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    return 0


def console():
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
