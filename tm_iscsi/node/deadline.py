"""The time a node call has left: the front-end passes its remaining budget (`--budget SECONDS`,
before the command) and the helper stops in time, at a point the re-run converges from, instead
of going on after the front-end has given up. Without a budget (an administrator at a shell)
every wait keeps its own limit."""
import time

from .errors import NodeError

# Seconds kept back for the answer to travel and the front-end to read it.
MARGIN = 3.0
_until = None


def start(budget_seconds, since=None):
    global _until
    _until = (time.monotonic() if since is None else since) + \
        max(1.0, float(budget_seconds) - MARGIN)


def remaining():
    """Seconds left, or None when the call has no deadline."""
    if _until is None:
        return None
    return max(0.0, _until - time.monotonic())


def bounded(seconds):
    """`seconds`, or less when the deadline comes first."""
    left = remaining()
    return seconds if left is None else min(seconds, left)


def check(doing):
    """Stop between two steps when the budget is spent (the re-run continues from here)."""
    left = remaining()
    if left is not None and left <= 0:
        raise NodeError(f"stopped before {doing}: the front-end's time budget for this call ran "
                        "out; re-running the action continues from here")
