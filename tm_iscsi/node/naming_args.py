"""argparse types for the names the node helper accepts."""
import argparse

from .. import naming


def name(what):
    def check(value):
        if not naming.valid_name(value):
            raise argparse.ArgumentTypeError(f"invalid {what} name {value!r}")
        return value
    return check
