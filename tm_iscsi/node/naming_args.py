"""argparse types of the node helper: every name, path and number a command accepts is checked
here before anything runs, with a message that says what was expected."""
import argparse
import re

from .. import naming


def checked(predicate, what):
    def check(value):
        if not predicate(value):
            raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a valid {what}")
        return value
    check.__name__ = what
    return check


_INT_RE = re.compile(r"-?[0-9]{1,19}")


def int_range(low, high, what):
    def check(value):
        # ASCII digits only: int() takes other scripts' digits and thousands of them.
        if not _INT_RE.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a whole number ({what})")
        number = int(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, "
                                             f"not {number}")
        return number
    check.__name__ = what
    return check


def name(what):
    return checked(naming.valid_name, f"{what} name")


# An LV the helper acts on by name: only names tm_iscsi gives its LVs (confine.require_scheme
# holds new ones to it), so the thin pool, the OS's LVs and anybody else's are refused by name
# before the VG is even read.
def LV(value):
    if not naming.is_scheme_lv(value):
        raise argparse.ArgumentTypeError(
            f"LV {value[:80]!r} is not tm_iscsi's (its LVs are named img-N or vm-N-disk-N, with "
            "-snap-N, -backup-N, -base or -map)")
    return value


def _tm_iscsi_tag(value):
    from . import lvm
    return lvm.valid_tag(value) and (value == naming.OWNER_TAG or
                                     value.startswith(naming.OWNER_TAG + "."))


# The tags the helper sets, removes or filters by: tm_iscsi's own (tm_iscsi, tm_iscsi.<key>=...).
TAG = checked(_tm_iscsi_tag, f"tm_iscsi LV tag ({naming.OWNER_TAG} or {naming.OWNER_TAG}."
              "<key>=<value>, letters, digits and _+.:/=- only)")
