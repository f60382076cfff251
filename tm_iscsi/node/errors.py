"""Failures of the node helper, each one line for the administrator."""


class NodeError(Exception):
    """A sub-command could not do what it was asked; nothing was changed that is not undone."""

    exit_code = 1

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class NodeUsageError(NodeError):
    exit_code = 2
