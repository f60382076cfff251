"""DS driver actions: the object id and the driver-action document oned sends.

oned 6.8 and later (6.10, 7.x) call ``datastore/<DS_MAD>/<action> <id>`` with the base64 of a
``<DS_DRIVER_ACTION_DATA>`` document on stdin; 6.6 and earlier passed it as the first argument
(``<action> <base64> <id>``). Both are accepted: the argument count tells them apart. The TM
``monitor`` of a shared system datastore is called the same way from the TM directory.

The document holds an ``<IMAGE>`` (image actions only), the ``<DATASTORE>``, and for a system
datastore monitor ``<DATASTORE_LOCATION>`` and ``<MONITOR_VM_DISKS>``. The id is the image id
for image actions, the datastore id for monitor and a plain request counter for stat.
"""

import base64
import binascii
import os
import re
import sys

from .errors import BadDriverAction, UsageError, show_value
from .objects import Datastore, Image, parse_xml

#: Actions oned's datastore driver (and one_market for export) can call.
DS_ACTIONS = (
    "cp",
    "mkfs",
    "rm",
    "stat",
    "clone",
    "monitor",
    "snap_delete",
    "snap_revert",
    "snap_flatten",
    "export",
    "restore",
    "increment_flatten",
)

# Actions whose id is the IMAGE/ID of the document.
_IMAGE_ACTIONS = ("cp", "mkfs", "rm", "clone", "snap_delete", "snap_revert", "snap_flatten", "export")

_ROOT = "DS_DRIVER_ACTION_DATA"
_ID_RE = re.compile(r"[0-9]{1,10}\Z")
_ID_MAX = 2 ** 31 - 1
_WHITESPACE = re.compile(rb"\s+")


def decode_payload(payload, what):
    """Base64 text (str or bytes, line breaks allowed) -> XML text."""
    if isinstance(payload, str):
        payload = payload.encode("ascii", "replace")
    compact = _WHITESPACE.sub(b"", payload)
    if not compact:
        raise BadDriverAction("%s is empty" % what)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadDriverAction("%s is not base64: %s" % (what, err))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadDriverAction("%s does not decode to UTF-8 text" % what)


class DsDriverAction:
    """One decoded DS driver action."""

    def __init__(self, action, object_id, xml):
        self.action = action
        self.object_id = object_id
        self.xml = xml
        self._root = parse_xml(xml, _ROOT, "%s driver action" % action)
        if self._root.find("DATASTORE") is None:
            raise BadDriverAction("%s driver action has no <DATASTORE>" % action)

    def __repr__(self):
        return "<DsDriverAction %s %d>" % (self.action, self.object_id)

    @property
    def element(self):
        return self._root

    @property
    def datastore(self):
        return Datastore(self._root.find("DATASTORE"))

    @property
    def image(self):
        """The IMAGE of an image action, None for monitor."""
        node = self._root.find("IMAGE")
        return None if node is None else Image(node)

    def require_image(self):
        image = self.image
        if image is None:
            raise BadDriverAction("%s driver action for id %d has no <IMAGE>" % (self.action, self.object_id))
        return image

    @property
    def datastore_location(self):
        """DATASTORE_LOCATION of a system datastore monitor (``/var/lib/one//datastores``)."""
        node = self._root.find("DATASTORE_LOCATION")
        text = None if node is None or node.text is None else node.text.strip()
        return text or None

    @property
    def monitor_vm_disks(self):
        node = self._root.find("MONITOR_VM_DISKS")
        return node is not None and (node.text or "").strip() == "1"


def _parse_id(action, word):
    if not _ID_RE.match(word) or int(word) > _ID_MAX:
        raise UsageError("%s: the object id must be a non-negative integer, got %s" % (action, show_value(word)))
    return int(word)


def _check_action(action):
    name = str(action).lower()
    if name not in DS_ACTIONS:
        raise UsageError("unknown DS action %s; expected one of: %s" % (show_value(action), " ".join(DS_ACTIONS)))
    return name


def read_ds_action(action, args, stdin=None):
    """Decode a DS action from the words after the script path and its stdin.

    ``stdin`` may be str, bytes or a binary file; None reads ``sys.stdin`` (only when the
    document is not on argv: before 6.8 oned sent nothing on stdin).
    """
    action = _check_action(action)
    args = list(args)
    if len(args) == 1:
        object_id = _parse_id(action, args[0])
        if stdin is None:
            stdin = sys.stdin.buffer
        if hasattr(stdin, "read"):
            stdin = stdin.read()
        xml = decode_payload(
            stdin,
            "%s: the driver action on stdin (oned 6.8+ sends it there; older oned as argument 1)" % action,
        )
    elif len(args) == 2:
        object_id = _parse_id(action, args[1])
        xml = decode_payload(args[0], "%s: the driver action in argument 1" % action)
    else:
        raise UsageError(
            "%s: expected <id> with the driver action on stdin, or <base64> <id>; got %d arguments"
            % (action, len(args))
        )
    decoded = DsDriverAction(action, object_id, xml)
    _check_ids(decoded)
    return decoded


def _check_ids(decoded):
    # The id on argv and the document must describe the same object; a mismatch means the
    # caller mixed up two requests, and acting on either could destroy the wrong volume.
    if decoded.action in _IMAGE_ACTIONS:
        image_id = decoded.require_image().integer("ID")
        if image_id is not None and image_id != decoded.object_id:
            raise BadDriverAction(
                "%s: argv names image %d but the driver action describes image %d"
                % (decoded.action, decoded.object_id, image_id)
            )
    if decoded.action == "monitor":
        ds_id = decoded.datastore.integer("ID")
        if ds_id is not None and ds_id != decoded.object_id:
            raise BadDriverAction(
                "monitor: argv names datastore %d but the driver action describes datastore %d"
                % (decoded.object_id, ds_id)
            )


def read_ds_argv(argv, stdin=None):
    """Decode a whole ``sys.argv``; the action is the script's file name."""
    if not argv:
        raise UsageError("empty argv: cannot tell which DS action was called")
    return read_ds_action(os.path.basename(argv[0]), argv[1:], stdin)
