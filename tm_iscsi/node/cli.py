"""`tm-iscsi-node <command> [options]`: dispatch, JSON output and the error contract.

Commands register themselves with `command()` in the cmd_* modules; this module only knows how to
call them and how to report."""
import argparse
import json
import sys

from .errors import NodeError, NodeUsageError

_COMMANDS = {}


def command(name, help):
    """Register `func(args) -> dict` as sub-command `name`; `func.configure(parser)` adds options."""
    def register(func):
        _COMMANDS[name] = (func, help)
        return func
    return register


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise NodeUsageError(f"{self.prog}: {message}")


def _load_commands():
    # Storage commands need rtslib_fb only when they run; hosts do not have it.
    from . import cmd_cache, cmd_host, cmd_storage, cmd_tags, cmd_vmdir  # noqa: F401


def build_parser():
    _load_commands()
    parser = _Parser(prog="tm-iscsi-node", description="tm_iscsi node helper")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (func, help_text) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=help_text)
        configure = getattr(func, "configure", None)
        if configure:
            configure(p)
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
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
