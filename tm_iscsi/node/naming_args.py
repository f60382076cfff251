"""argparse types of the node helper: every name, path and number a command accepts is checked
here before anything runs, with a message that says what was expected."""
import argparse

from .. import naming


def checked(predicate, what):
    def check(value):
        if not predicate(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid {what}")
        return value
    check.__name__ = what
    return check


def int_range(low, high, what):
    def check(value):
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number ({what})")
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, "
                                             f"not {number}")
        return number
    check.__name__ = what
    return check


def name(what):
    return checked(naming.valid_name, f"{what} name")
