"""Exceptions of the OpenNebula protocol layer.

oned shows the user the plain stderr lines of a failed action (see DriverExecHelper), and the
VM's ERROR attribute keeps only about 60 useful characters of them. So every exception here
renders as exactly one line with the cause first.
"""

_MAX_SHOWN = 80


def one_line(text):
    """Collapse ``text`` to a single line: oned joins stderr lines with no separator."""
    return " ".join(str(text).split())


def show_value(value):
    """Render an untrusted value for a message: control characters escaped, length capped.

    Used when quoting argv or XML content back to the administrator, so a hostile or broken
    value can neither split the message in two nor flood the VM log.
    """
    text = str(value)
    escaped = text.encode("unicode_escape").decode("ascii")
    if len(escaped) > _MAX_SHOWN:
        escaped = escaped[: _MAX_SHOWN - 3] + "..."
    return "'" + escaped + "'"


class OneError(Exception):
    """Base class: a failure of this layer with a one-line message."""

    def __init__(self, message):
        super().__init__(one_line(message))

    @property
    def message(self):
        return self.args[0]


class UsageError(OneError):
    """A driver action was called with arguments oned would never produce."""


class BadDriverAction(OneError):
    """The base64 driver-action document on stdin/argv cannot be decoded or is not one."""


class BadXml(OneError):
    """A document is not the XML object it should be."""


class MissingAttribute(OneError):
    """An attribute the driver needs is absent or empty in an object's XML."""

    def __init__(self, kind, object_id, attribute, hint=""):
        self.kind = kind
        self.object_id = object_id
        self.attribute = attribute
        where = "%s %s" % (kind, object_id) if object_id is not None else kind
        text = "%s has no %s" % (where, attribute)
        if hint:
            text += " (" + hint + ")"
        super().__init__(text)


class BadAttribute(OneError):
    """An attribute is present but its value is not one the driver understands."""

    def __init__(self, kind, object_id, attribute, value, expected):
        self.kind = kind
        self.object_id = object_id
        self.attribute = attribute
        where = "%s %s" % (kind, object_id) if object_id is not None else kind
        super().__init__(
            "%s: %s=%s is not %s" % (where, attribute, show_value(value), expected)
        )


class OnedError(OneError):
    """oned refused or failed an XML-RPC call."""

    def __init__(self, message, code=None):
        self.code = code
        super().__init__(message)


class OnedAuthError(OnedError):
    """Authentication (0x100) or authorization (0x200) failure."""


class OnedNoSuchObject(OnedError):
    """The object does not exist (0x400)."""


class OnedUnreachable(OnedError):
    """No answer from oned: connection refused, timeout, HTTP error, malformed reply."""


class OneConfigError(OneError):
    """The credentials or endpoint of oned cannot be found or read."""
