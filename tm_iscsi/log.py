"""Logging for action scripts: stdout is protocol only, so everything else goes to stderr.

oned forwards `INFO: ...` lines to its log; a plain line is what the user reads when the action
fails, so exactly one plain line is ever written, by the entry point, on failure."""
import sys


def info(message):
    print(f"INFO: {message}", file=sys.stderr, flush=True)


def error_line(message):
    print(" ".join(str(message).split()), file=sys.stderr, flush=True)
