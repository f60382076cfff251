"""Read-only views over the VM, Datastore and Image XML documents oned produces.

The same documents reach the driver three ways: from ``one.*.info`` through the client, base64
on stdin of premigrate/postmigrate/failmigrate (a VM), and inside a DS driver action (an IMAGE
and a DATASTORE). The views only read; they never change or re-serialize what oned sent.

Optional attributes come back as None. Attributes an action cannot work without are read with
the ``require*`` accessors, which raise `MissingAttribute` naming object, id and attribute; a value
that is present but unusable raises `BadAttribute`. Both are one-line messages for oned.
"""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional, Tuple

from ..protocol import MODES
from .errors import BadAttribute, BadXml, MissingAttribute
from .states import (
    DatastoreType,
    ImageState,
    ImageType,
    LcmState,
    VmState,
    history_action_name,
)

#: CACHE_MODE values the driver implements (datastore attribute, overridable per VM disk).
CACHE_MODES = MODES

_TRUE_WORDS = ("yes", "true", "1")
_FALSE_WORDS = ("no", "false", "0")


_INTEGER_RE = re.compile(r"\s*-?[0-9]{1,19}\s*")
# Where the root element starts: a document type declaration can only come before it.
_ELEMENT_START_RE = re.compile(r"<[A-Za-z_]")


def parse_xml(xml, expected_root, what):
    """Parse ``xml`` (str or bytes) and check its root tag. oned never writes a document type
    declaration; one is refused before parsing, so no entity is ever expanded or fetched."""
    text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else str(xml)
    first_element = _ELEMENT_START_RE.search(text)
    if "<!DOCTYPE" in text[:first_element.start() if first_element else len(text)]:
        raise BadXml("%s has a document type declaration (<!DOCTYPE>), which oned never sends"
                     % what)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise BadXml("%s is not valid XML: %s" % (what, err))
    if root.tag != expected_root:
        raise BadXml("%s has root <%s>, expected <%s>" % (what, root.tag, expected_root))
    return root


class _XmlView:
    """Typed reads of child elements of one XML element.

    ``_where`` is how error messages name the element: ("VM", "3"), ("VM 3 disk", "1").
    """

    def __init__(self, element):
        self._element = element

    @property
    def element(self):
        """The underlying element, for reads this view does not offer."""
        return self._element

    def _where(self):
        """(kind, id or None) naming this element in messages."""
        raise NotImplementedError

    def _name(self):
        kind, ident = self._where()
        return kind if ident is None else "%s %s" % (kind, ident)

    def _missing(self, attribute, hint=""):
        kind, ident = self._where()
        return MissingAttribute(kind, ident, attribute, hint)

    def _bad(self, attribute, value, expected):
        kind, ident = self._where()
        return BadAttribute(kind, ident, attribute, value, expected)

    def text(self, path):
        """Text of the element at ``path``, stripped; None when absent or empty."""
        node = self._element.find(path)
        if node is None or node.text is None:
            return None
        value = node.text.strip()
        return value or None

    def require(self, path, hint=""):
        value = self.text(path)
        if value is None:
            raise self._missing(path, hint)
        return value

    def integer(self, path):
        """Integer at ``path`` or None when absent; a non-integer is an error."""
        value = self.text(path)
        if value is None:
            return None
        # ASCII digits only (int() takes other scripts' digits too), and no more than a 64-bit
        # number has: oned writes nothing longer.
        if not _INTEGER_RE.fullmatch(value):
            raise self._bad(path, value, "an integer")
        return int(value)

    def require_integer(self, path, hint=""):
        value = self.integer(path)
        if value is None:
            raise self._missing(path, hint)
        return value

    def flag(self, path, default=False):
        """YES/NO (or 1/0, TRUE/FALSE) at ``path``; ``default`` when absent."""
        value = self.text(path)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE_WORDS:
            return True
        if lowered in _FALSE_WORDS:
            return False
        raise self._bad(path, value, "YES or NO")

    def _enum(self, path, enum_class, what):
        number = self.require_integer(path)
        try:
            return enum_class(number)
        except ValueError:
            raise self._bad(path, number, what + " this driver knows")

    def _cache_mode(self, path):
        value = self.text(path)
        if value is None:
            return None
        lowered = value.lower()
        if lowered not in CACHE_MODES:
            raise self._bad(path, value, "one of " + ", ".join(CACHE_MODES))
        return lowered


class _Document(_XmlView):
    """A whole object document: keeps the XML text it was built from."""

    ROOT = ""
    KIND = ""

    def __init__(self, element, xml=None):
        if element.tag != self.ROOT:
            raise BadXml("%s document has root <%s>, expected <%s>" % (self.KIND, element.tag, self.ROOT))
        super().__init__(element)
        self._xml = xml

    @classmethod
    def from_xml(cls, xml):
        view = cls(parse_xml(xml, cls.ROOT, cls.KIND + " XML"))
        view._xml = xml if isinstance(xml, str) else xml.decode("utf-8")
        return view

    @property
    def xml(self):
        """The XML text as received (serialized from the element if built from one)."""
        if self._xml is None:
            return ET.tostring(self._element, encoding="unicode")
        return self._xml

    def _where(self):
        return self.KIND, self.text("ID")

    @property
    def id(self):
        return self.require_integer("ID")

    @property
    def name(self):
        return self.text("NAME")

    def template_attr(self, name):
        """``TEMPLATE/<name>``, None when absent or empty."""
        return self.text("TEMPLATE/" + name)

    def require_template_attr(self, name, hint=""):
        return self.require("TEMPLATE/" + name, hint)


@dataclass(frozen=True)
class Snapshot:
    """One SNAPSHOT of an image or of a VM disk."""

    id: int
    name: Optional[str]
    parent: int
    active: bool
    size_mb: Optional[int]
    date: Optional[int]


def _snapshots(view, path):
    found = []
    for node in view.element.findall(path):
        snap = _SnapshotView(node, view)
        parent = snap.integer("PARENT")
        found.append(
            Snapshot(
                id=snap.require_integer("ID"),
                name=snap.text("NAME"),
                parent=-1 if parent is None else parent,
                active=snap.flag("ACTIVE"),
                size_mb=snap.integer("SIZE"),
                date=snap.integer("DATE"),
            )
        )
    return tuple(found)


class _SnapshotView(_XmlView):
    def __init__(self, element, owner):
        super().__init__(element)
        self._owner = owner

    def _where(self):
        return self._owner._name() + " snapshot", self.text("ID") or "?"


# --------------------------------------------------------------------------------------------
# VM
# --------------------------------------------------------------------------------------------


class Disk(_XmlView):
    """One ``TEMPLATE/DISK`` of a VM."""

    def __init__(self, element, vm_where):
        super().__init__(element)
        self._vm_where = vm_where

    def _where(self):
        return self._vm_where + " disk", self.text("DISK_ID") or "?"

    def __repr__(self):
        return "<Disk %s source=%s>" % (self.text("DISK_ID"), self.text("SOURCE"))

    def attr(self, name):
        return self.text(name)

    def require_attr(self, name, hint=""):
        return self.require(name, hint)

    @property
    def disk_id(self):
        return self.require_integer("DISK_ID")

    @property
    def source(self):
        return self.text("SOURCE")

    def require_source(self):
        return self.require("SOURCE", "not an image disk?")

    @property
    def image_id(self):
        return self.integer("IMAGE_ID")

    @property
    def image_name(self):
        return self.text("IMAGE")

    @property
    def datastore_id(self):
        return self.require_integer("DATASTORE_ID")

    @property
    def datastore_name(self):
        return self.text("DATASTORE")

    @property
    def tm_mad(self):
        return self.text("TM_MAD")

    @property
    def tm_mad_system(self):
        return self.text("TM_MAD_SYSTEM")

    @property
    def clone(self):
        return self.flag("CLONE")

    @property
    def persistent(self):
        return self.flag("PERSISTENT")

    @property
    def save(self):
        return self.flag("SAVE")

    @property
    def save_as(self):
        """SAVE_AS of releases before 5.0 (deferred save-as); None on 6.x/7.x."""
        return self.text("SAVE_AS")

    @property
    def readonly(self):
        return self.flag("READONLY")

    @property
    def type(self):
        """TYPE as oned writes it: BLOCK, FILE, CDROM, fs, swap, ..."""
        return self.text("TYPE")

    @property
    def disk_type(self):
        """DISK_TYPE inherited from the datastore (BLOCK for this driver)."""
        return self.text("DISK_TYPE")

    @property
    def is_volatile(self):
        """A disk with no image behind it (TYPE fs or swap, made by mkimage / mkswap)."""
        return self.image_id is None

    @property
    def is_cdrom(self):
        return (self.type or "").upper() == "CDROM"

    @property
    def size_mb(self):
        return self.integer("SIZE")

    def require_size_mb(self):
        return self.require_integer("SIZE")

    @property
    def size_prev_mb(self):
        return self.integer("SIZE_PREV")

    @property
    def original_size_mb(self):
        return self.integer("ORIGINAL_SIZE")

    @property
    def format(self):
        return self.text("FORMAT")

    @property
    def fs(self):
        """Filesystem for a volatile fs disk (FS; only in the XML, never on argv)."""
        return self.text("FS")

    @property
    def target(self):
        return self.text("TARGET")

    @property
    def cache_mode(self):
        """Per-disk CACHE_MODE override, or None to use the datastore's."""
        return self._cache_mode("CACHE_MODE")

    @property
    def iscsi_host(self):
        return self.text("ISCSI_HOST")

    # Marks oned sets on the disk being operated on at call time.
    @property
    def attaching(self):
        """ATTACH=YES: the disk of a hotplug attach or detach."""
        return self.flag("ATTACH")

    @property
    def resizing(self):
        return self.flag("RESIZE")

    @property
    def snapshot_active(self):
        return self.flag("DISK_SNAPSHOT_ACTIVE")

    @property
    def snapshot_id(self):
        return self.integer("DISK_SNAPSHOT_ID")

    @property
    def save_as_active(self):
        return self.flag("HOTPLUG_SAVE_AS_ACTIVE")

    @property
    def save_as_image_id(self):
        return self.integer("HOTPLUG_SAVE_AS")

    @property
    def save_as_source(self):
        return self.text("HOTPLUG_SAVE_AS_SOURCE")

    @property
    def save_as_snapshot_id(self):
        return self.integer("HOTPLUG_SAVE_AS_SNAPSHOT_ID")


class HistoryRecord(_XmlView):
    """One ``HISTORY_RECORDS/HISTORY`` entry: where the VM was placed and why."""

    def __init__(self, element, vm_where):
        super().__init__(element)
        self._vm_where = vm_where

    def _where(self):
        return self._vm_where + " history", self.text("SEQ") or "?"

    def __repr__(self):
        return "<HistoryRecord seq=%s host=%s ds=%s>" % (
            self.text("SEQ"), self.text("HOSTNAME"), self.text("DS_ID"))

    @property
    def seq(self):
        return self.require_integer("SEQ")

    @property
    def hostname(self):
        return self.require("HOSTNAME")

    @property
    def host_id(self):
        return self.require_integer("HID")

    @property
    def ds_id(self):
        """The system datastore of this placement."""
        return self.require_integer("DS_ID")

    @property
    def tm_mad(self):
        return self.text("TM_MAD")

    @property
    def vm_mad(self):
        return self.text("VM_MAD")

    @property
    def action_id(self):
        return self.integer("ACTION") or 0

    @property
    def action_name(self):
        return history_action_name(self.action_id)


class VirtualMachine(_Document):
    """A ``<VM>`` document (``onevm show -x``, ``one.vm.info``, migrate stdin)."""

    ROOT = "VM"
    KIND = "VM"

    def __repr__(self):
        return "<VirtualMachine %s %s/%s>" % (self.text("ID"), self.text("STATE"), self.text("LCM_STATE"))

    @property
    def state(self):
        return self._enum("STATE", VmState, "a VM state")

    @property
    def lcm_state(self):
        return self._enum("LCM_STATE", LcmState, "an LCM state")

    @property
    def prev_state(self):
        return self._enum("PREV_STATE", VmState, "a VM state")

    @property
    def prev_lcm_state(self):
        return self._enum("PREV_LCM_STATE", LcmState, "an LCM state")

    @property
    def state_name(self):
        """``ACTIVE/EPILOG_UNDEPLOY`` as onevm prints it."""
        return "%s/%s" % (self.state.name, self.lcm_state.name)

    @property
    def deploy_id(self):
        return self.text("DEPLOY_ID")

    @property
    def disks(self) -> Tuple[Disk, ...]:
        where = self._name()
        return tuple(Disk(node, where) for node in self._element.findall("TEMPLATE/DISK"))

    def disk(self, disk_id):
        """The DISK with ``DISK_ID`` = disk_id."""
        for disk in self.disks:
            if disk.integer("DISK_ID") == disk_id:
                return disk
        raise self._missing("DISK with DISK_ID=%d" % disk_id)

    def find_disk(self, disk_id):
        """Like `disk` but None when there is no such disk (context disk, detached disk)."""
        for disk in self.disks:
            if disk.integer("DISK_ID") == disk_id:
                return disk
        return None

    @property
    def context_disk_id(self):
        return self.integer("TEMPLATE/CONTEXT/DISK_ID")

    @property
    def tm_mad_system(self):
        return self.text("TEMPLATE/TM_MAD_SYSTEM")

    def disk_snapshots(self, disk_id):
        """Snapshots of one disk (``/VM/SNAPSHOTS[DISK_ID=n]``)."""
        for node in self._element.findall("SNAPSHOTS"):
            holder = _SnapshotsOfDisk(node, self._name())
            if holder.integer("DISK_ID") == disk_id:
                return _snapshots(holder, "SNAPSHOT")
        return ()

    @property
    def history(self) -> Tuple[HistoryRecord, ...]:
        where = self._name()
        return tuple(HistoryRecord(n, where) for n in self._element.findall("HISTORY_RECORDS/HISTORY"))

    @property
    def current_history(self):
        """The newest placement (where the VM is, or is going to)."""
        records = self.history
        if not records:
            raise self._missing("HISTORY_RECORDS/HISTORY", "the VM was never placed on a host")
        return records[-1]

    @property
    def previous_history(self):
        """The placement before the newest one, or None.

        Only ``onevm show -x`` / ``one.vm.info`` carry all records; the VM XML on migrate stdin
        carries only the newest one.
        """
        records = self.history
        return records[-2] if len(records) > 1 else None

    @property
    def error(self):
        """The last error oned recorded for the VM (USER_TEMPLATE/ERROR), if any."""
        return self.text("USER_TEMPLATE/ERROR")

    def user_template_attr(self, name):
        return self.text("USER_TEMPLATE/" + name)

    def require_user_template_attr(self, name, hint=""):
        return self.require("USER_TEMPLATE/" + name, hint)


class _SnapshotsOfDisk(_XmlView):
    def __init__(self, element, vm_where):
        super().__init__(element)
        self._vm_where = vm_where

    def _where(self):
        return self._vm_where + " disk", self.text("DISK_ID") or "?"


# --------------------------------------------------------------------------------------------
# Datastore
# --------------------------------------------------------------------------------------------


class Datastore(_Document):
    """A ``<DATASTORE>`` document."""

    ROOT = "DATASTORE"
    KIND = "datastore"

    def __repr__(self):
        return "<Datastore %s %s>" % (self.text("ID"), self.text("NAME"))

    @property
    def type(self):
        return self._enum("TYPE", DatastoreType, "a datastore type")

    @property
    def is_system(self):
        return self.type == DatastoreType.SYSTEM_DS

    @property
    def ds_mad(self):
        """DS_MAD, None for a system datastore (oned writes ``-``)."""
        value = self.text("DS_MAD")
        return None if value in (None, "-") else value

    @property
    def tm_mad(self):
        return self.require("TM_MAD")

    @property
    def base_path(self):
        return self.require("BASE_PATH")

    @property
    def state(self):
        return self.integer("STATE")

    @property
    def disk_type(self):
        """DISK_TYPE as a number (2 = BLOCK); the template keeps the name."""
        return self.integer("DISK_TYPE")

    @property
    def total_mb(self):
        return self.integer("TOTAL_MB")

    @property
    def free_mb(self):
        return self.integer("FREE_MB")

    @property
    def used_mb(self):
        return self.integer("USED_MB")

    @property
    def cluster_ids(self):
        return tuple(int(n.text) for n in self._element.findall("CLUSTERS/ID") if n.text)

    @property
    def image_ids(self):
        return tuple(int(n.text) for n in self._element.findall("IMAGES/ID") if n.text)

    @property
    def iscsi_host(self):
        """The storage node (required: DS_MAD_CONF lists it in REQUIRED_ATTRS)."""
        return self.require_template_attr("ISCSI_HOST")

    @property
    def vg_name(self):
        return self.require_template_attr("VG_NAME")

    @property
    def bridge_list(self):
        """BRIDGE_LIST hosts, in order; empty when unset."""
        value = self.template_attr("BRIDGE_LIST")
        return tuple(value.split()) if value else ()

    @property
    def cache_mode(self):
        return self._cache_mode("TEMPLATE/CACHE_MODE")

    @property
    def shared(self):
        return self.flag("TEMPLATE/SHARED")


# --------------------------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------------------------


class Image(_Document):
    """An ``<IMAGE>`` document (``one.image.info`` or inside a DS driver action)."""

    ROOT = "IMAGE"
    KIND = "image"

    def __repr__(self):
        return "<Image %s %s source=%s>" % (self.text("ID"), self.text("NAME"), self.text("SOURCE"))

    @property
    def type(self):
        return self._enum("TYPE", ImageType, "an image type")

    @property
    def state(self):
        return self._enum("STATE", ImageState, "an image state")

    @property
    def persistent(self):
        return self.flag("PERSISTENT")

    @property
    def source(self):
        """SOURCE; None until cp/mkfs/clone returned one."""
        return self.text("SOURCE")

    def require_source(self):
        return self.require("SOURCE")

    @property
    def path(self):
        """PATH: the file to import for cp, the origin's SOURCE for clone."""
        return self.text("PATH")

    def require_path(self):
        return self.require("PATH")

    @property
    def size_mb(self):
        """SIZE in MB; None in a stat request (size not known yet)."""
        return self.integer("SIZE")

    def require_size_mb(self):
        return self.require_integer("SIZE")

    @property
    def format(self):
        return self.text("FORMAT")

    @property
    def is_save_as(self):
        """mkfs of a disk-saveas target: the data comes later through cpds."""
        return (self.format or "").lower() == "save_as"

    @property
    def fs(self):
        """FS for a datablock (FSTYPE before 5.x)."""
        return self.text("FS") or self.text("FSTYPE")

    @property
    def datastore_id(self):
        return self.require_integer("DATASTORE_ID")

    @property
    def datastore_name(self):
        return self.text("DATASTORE")

    @property
    def target_snapshot(self):
        """Snapshot id of a snap_revert / snap_delete / snap_flatten; None when -1."""
        value = self.integer("TARGET_SNAPSHOT")
        return None if value is None or value < 0 else value

    def require_target_snapshot(self):
        value = self.target_snapshot
        if value is None:
            raise self._missing("TARGET_SNAPSHOT", "no snapshot was selected")
        return value

    @property
    def cloning_id(self):
        """Image id being cloned (DS clone), None when -1."""
        value = self.integer("CLONING_ID")
        return None if value is None or value < 0 else value

    @property
    def snapshots(self):
        return _snapshots(self, "SNAPSHOTS/SNAPSHOT")

    @property
    def running_vms(self):
        return self.integer("RUNNING_VMS") or 0

    @property
    def error(self):
        """Why the image is in ERROR (TEMPLATE/ERROR), if it is."""
        return self.template_attr("ERROR")

    @property
    def md5(self):
        return self.template_attr("MD5")

    @property
    def sha1(self):
        return self.template_attr("SHA1")

