"""What `tm-iscsi` and `tm-iscsi-hook` share on the command line: usage errors and failures end
as one line on stderr with a non-zero exit, never a traceback or argparse's usage block."""
import argparse
import re
import sys

from ..errors import DriverError
from ..node.errors import NodeError
from ..one.errors import OnedNoSuchObject, OneError

# oned's own words for a missing object: "[one.image.info] Error getting image [7]."
_MISSING = re.compile(r"Error getting (?P<kind>[a-z ]+) \[(?P<id>-?\d+)\]")
_LIST_COMMAND = {"image": "oneimage list", "virtual machine": "onevm list",
                 "vm": "onevm list", "host": "onehost list", "datastore": "onedatastore list",
                 "template": "onetemplate list", "hook": "onehook list"}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise DriverError(f"{message} (see {self.prog} --help)")


def run(prog, parser, commands, argv, cloud, out):
    from ..entry import guarded
    return guarded(prog, _run, prog, parser, commands, argv, cloud, out)


def _run(prog, parser, commands, argv, cloud, out):
    """Parse `argv`, build the Cloud when none is given, run the command; its exit code."""
    from .cloud import Cloud
    out = out or sys.stdout
    try:
        args = parser.parse_args(argv)
        cloud = cloud or Cloud()
        return commands[args.command](cloud, args, out)
    except OnedNoSuchObject as err:
        print(f"{prog}: {_missing_object(err)}", file=sys.stderr)
        return 1
    except (DriverError, OneError, NodeError) as err:
        print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _missing_object(err):
    """oned's "Error getting image [7]" as a sentence that says what to do."""
    match = _MISSING.search(str(err))
    if not match:
        return " ".join(str(err).split())
    kind = match.group("kind").strip()
    listing = _LIST_COMMAND.get(kind)
    return (f"oned has no {kind} {match.group('id')}" +
            (f" ({listing} shows what there is)" if listing else ""))
