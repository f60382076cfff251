"""What `tm-iscsi` and `tm-iscsi-hook` share on the command line: usage errors and failures end
as one line on stderr with a non-zero exit, never a traceback or argparse's usage block."""
import argparse
import sys

from ..errors import DriverError
from ..node.errors import NodeError
from ..one.errors import OneError


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise DriverError(f"{message} (see {self.prog} --help)")


def run(prog, parser, commands, argv, cloud, out):
    """Parse `argv`, build the Cloud when none is given, run the command; its exit code."""
    from .cloud import Cloud
    out = out or sys.stdout
    try:
        args = parser.parse_args(argv)
        cloud = cloud or Cloud()
        return commands[args.command](cloud, args, out)
    except (DriverError, OneError, NodeError) as err:
        print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
