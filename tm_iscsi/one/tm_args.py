"""Positional argv of the TM actions oned emits, parsed into frozen dataclasses.

oned builds each TM call from one line of a transfer file (or of a VMM message) that one_tm
splits on whitespace, so every argument is a single word and its position is its meaning. The
layouts below are the ones oned 6.10 and 7.x emit; `reference/opennebula-driver-protocol.md` §1.2
lists them and the oned 7.4.0 captures in shared/fixtures confirm them.

Everything parsed here is later pasted into ssh command lines and LVM / LIO names, so values are
checked against small character sets instead of being quoted later: a path, host or name with
whitespace, a shell metacharacter or a control character is refused with a `UsageError` whose
message names the action, the argument and what was expected. Hosts are names or IPv4
addresses: the ``host:path`` form cannot carry an IPv6 literal, and a leading ``-`` (an ssh
option) is refused.
"""

import os
import re
import string
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from .errors import UsageError, show_value

# --------------------------------------------------------------------------------------------
# Action names
# --------------------------------------------------------------------------------------------

#: Every TM action oned can emit for a driver used as image and system datastore TM.
TM_ACTIONS = (
    "clone",
    "ln",
    "mkswap",
    "mkimage",
    "context",
    "delete",
    "mvds",
    "cpds",
    "mv",
    "premigrate",
    "postmigrate",
    "failmigrate",
    "snap_create",
    "snap_create_live",
    "snap_delete",
    "snap_revert",
    "resize",
    "prebackup",
    "prebackup_live",
    "postbackup",
    "postbackup_live",
    "restore",
    "monitor",
)

# Console scripts of the package carry these historical names (DESIGN.md).
_LEGACY_PREFIX = "tm_"


def split_action_name(name):
    """``"CLONE.ssh"`` -> ``("clone", "ssh")``; ``"mv"`` -> ``("mv", None)``.

    oned appends ``.<TM_MAD_SYSTEM>`` to the action of a disk that carries TM_MAD_SYSTEM, and
    one_tm lower-cases the whole word and cuts at the *last* dot when no script has the full
    name. The action part must be one this module knows.
    """
    lowered = str(name).lower()
    action, dot, system_tm = lowered.rpartition(".")
    if not dot:
        action, system_tm = lowered, None
    if action not in TM_ACTIONS:
        raise UsageError(
            "unknown TM action %s; expected one of: %s" % (show_value(name), " ".join(TM_ACTIONS))
        )
    if system_tm is not None:
        _check_chars("TM action " + show_value(name), "system TM suffix", system_tm, _NAME_CHARS)
    return action, system_tm


def script_candidates(action_field):
    """Script names one_tm tries for a transfer-line action, in order.

    ``"CLONE.iscsi_lvm"`` -> ``("clone.iscsi_lvm", "clone")``: the suffixed script first, then
    the plain one.
    """
    lowered = str(action_field).lower()
    head, dot, _tail = lowered.rpartition(".")
    if dot and head:
        return (lowered, head)
    return (lowered,)


def action_from_program(program):
    """The TM action a script implements, from its path (``argv[0]``).

    Accepts the remotes layout (``.../tm/iscsi_lvm/snap_create.ssh``) and the package's
    legacy console-script names (``tm_clone``).
    """
    base = os.path.basename(str(program))
    lowered = base.lower()
    if lowered.startswith(_LEGACY_PREFIX) and lowered[len(_LEGACY_PREFIX):].split(".")[0] in TM_ACTIONS:
        base = base[len(_LEGACY_PREFIX):]
    return split_action_name(base)


@dataclass(frozen=True)
class TransferLine:
    """One line of a transfer file: ``ACTION[.<tm_system>] <tm_name> args...``."""

    action_field: str
    tm_name: str
    args: Tuple[str, ...]

    @property
    def action(self):
        return split_action_name(self.action_field)[0]

    @property
    def system_tm(self):
        return split_action_name(self.action_field)[1]

    @property
    def script_candidates(self):
        return script_candidates(self.action_field)


_RUBY_WHITESPACE = re.compile(r"[ \t\n\v\f\r]+")


def parse_transfer_line(line):
    """Split a transfer-file line the way one_tm does; None for comments and blank lines.

    one_tm uses Ruby's ``line.split(' ')``, which is awk-style: runs of whitespace separate
    fields and leading/trailing whitespace is dropped.
    """
    stripped = line.strip(" \t\n\v\f\r")
    if not stripped or stripped.startswith("#"):
        return None
    fields = _RUBY_WHITESPACE.split(stripped)
    if len(fields) < 2:
        raise UsageError("transfer line %s has no TM name after the action" % show_value(line))
    return TransferLine(fields[0], fields[1], tuple(fields[2:]))


def parse_transfer_text(text):
    """All action lines of a transfer file, in order."""
    return [parsed for parsed in map(parse_transfer_line, text.splitlines()) if parsed]


# --------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits
_HOST_CHARS = frozenset(_ALNUM + "_.-")
_NAME_CHARS = frozenset(_ALNUM + "_.-")
# No ':' (it separates host from path), nothing a shell would interpret.
_PATH_CHARS = frozenset(_ALNUM + "_.+,=@%/-")
_URL_CHARS = _PATH_CHARS | frozenset(":")
_FILE_NAME_CHARS = _PATH_CHARS - frozenset("/")

# oned's ids are C ints and its sizes fit far below 10 digits of MiB; a longer word is no number
# oned wrote (and int() of thousands of digits is slow, then refused by Python itself).
_INT_RE = re.compile(r"-?[0-9]{1,10}\Z")
INT_MAX = 2 ** 31 - 1
# Longest argv word accepted: paths under the datastore location, names, LV sources.
_WORD_MAX = 1024
_DISK_RE = re.compile(r"/disk\.([0-9]+)\Z")
_SLASHES_RE = re.compile(r"/{2,}")


def _describe_char(char):
    if char in " \t":
        return "whitespace"
    if char in "\n\r\v\f":
        return "a line break"
    if ord(char) < 32 or ord(char) == 127:
        return "a control character"
    return "the character %r" % char


def _check_chars(context, what, value, allowed):
    if not value:
        raise UsageError("%s: %s is empty" % (context, what))
    for char in value:
        if char not in allowed:
            raise UsageError(
                "%s: %s %s contains %s, which is not allowed"
                % (context, what, show_value(value), _describe_char(char))
            )


def collapse_slashes(path):
    """``/var/lib/one//datastores/0`` -> ``/var/lib/one/datastores/0`` (tm_common's arg_path)."""
    return _SLASHES_RE.sub("/", path)


@dataclass(frozen=True)
class HostPath:
    """``host:/path`` split at the first ``:``, with ``//`` collapsed."""

    host: str
    path: str

    @property
    def disk_id(self):
        """N for a ``.../disk.N`` path, None for the VM directory."""
        match = _DISK_RE.search(self.path)
        return int(match.group(1)) if match else None

    @property
    def is_disk(self):
        return self.disk_id is not None

    @property
    def vm_dir(self):
        """The VM's directory in the system datastore (``<DATASTORE_LOCATION>/<sys_ds>/<vmid>``)."""
        return os.path.dirname(self.path) if self.is_disk else self.path

    @property
    def system_ds_id(self):
        """The system datastore id that names the parent of the VM directory, if numeric."""
        parent = os.path.basename(os.path.dirname(self.vm_dir))
        return int(parent) if parent.isdigit() else None

    def __str__(self):
        return "%s:%s" % (self.host, self.path)


# --------------------------------------------------------------------------------------------
# Parsed argument records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageToDiskArgs:
    """clone / ln: ``fe:SOURCE host:<sysdir>/disk.N vmid dsid`` (dsid = image datastore)."""

    action: str
    image_host: str
    source: str
    disk: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class MkswapArgs:
    """mkswap: ``size_mb host:<sysdir>/disk.N vmid dsid`` (dsid = system datastore)."""

    action: str
    size_mb: int
    disk: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class MkimageArgs:
    """mkimage: ``size_mb format host:<sysdir>/disk.N vmid dsid``; FS is only in the VM XML."""

    action: str
    size_mb: int
    format: str
    disk: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class ContextFile:
    """One ``file[:target]`` word of a context call; target is the name inside the ISO."""

    path: str
    target: Optional[str] = None


@dataclass(frozen=True)
class ContextArgs:
    """context: ``context.sh [file[:target] ...] host:<sysdir>/disk.N vmid dsid``."""

    action: str
    context_script: str
    files: Tuple[ContextFile, ...]
    disk: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class DeleteArgs:
    """delete: ``host:<sysdir>/disk.N vmid dsid`` (one disk) or ``host:<sysdir> vmid dsid``."""

    action: str
    target: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def is_disk(self):
        return self.target.is_disk

    @property
    def disk_id(self):
        return self.target.disk_id


@dataclass(frozen=True)
class MvdsArgs:
    """mvds: ``host:<sysdir>/disk.N SOURCE vmid dsid``; SOURCE has no host prefix."""

    action: str
    disk: HostPath
    source: str
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class CpdsArgs:
    """cpds: ``host:<sysdir>/disk.N SOURCE snap_id vmid dsid``; snap_id -1 is the live disk."""

    action: str
    disk: HostPath
    source: str
    snap_id: int
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id

    @property
    def from_live_disk(self):
        return self.snap_id == -1


@dataclass(frozen=True)
class MvArgs:
    """mv: ``src_host:path dst_host:path vmid dsid``; both a disk or both the VM directory."""

    action: str
    src: HostPath
    dst: HostPath
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def is_disk(self):
        return self.src.is_disk

    @property
    def disk_id(self):
        return self.src.disk_id


@dataclass(frozen=True)
class MigrateArgs:
    """pre/post/failmigrate: ``src_host dst_host <sysdir> vmid dsid [calling_tm]``.

    The sixth word is added by tm_common's ``migrate_other`` when a system TM fans the call
    out to the TMs of the VM's disks; it names that system TM.
    """

    action: str
    src_host: str
    dst_host: str
    vm_dir: str
    vmid: int
    dsid: int
    caller_tm: Optional[str] = None
    system_tm: Optional[str] = None

    @property
    def is_fan_out(self):
        return self.caller_tm is not None


@dataclass(frozen=True)
class SnapshotArgs:
    """snap_create[_live] / snap_delete / snap_revert: ``host:<sysdir>/disk.N snap_id vmid dsid``."""

    action: str
    disk: HostPath
    snap_id: int
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id

    @property
    def is_live(self):
        return self.action.endswith("_live")


@dataclass(frozen=True)
class ResizeArgs:
    """resize: ``host:<sysdir>/disk.N new_size_mb vmid dsid``."""

    action: str
    disk: HostPath
    size_mb: int
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def disk_id(self):
        return self.disk.disk_id


@dataclass(frozen=True)
class BackupArgs:
    """[pre|post]backup[_live]: ``host:<sysdir> disk_id[:disk_id...] deploy_id bj_id|- vmid dsid``."""

    action: str
    vm_dir: HostPath
    disk_ids: Tuple[int, ...]
    deploy_id: str
    backup_job_id: Optional[int]
    vmid: int
    dsid: int
    system_tm: Optional[str] = None

    @property
    def is_live(self):
        return self.action.endswith("_live")


@dataclass(frozen=True)
class RestoreArgs:
    """restore: ``host:<sysdir> vmid backup_image_id increment_id disk_id`` (-1 = all)."""

    action: str
    vm_dir: HostPath
    vmid: int
    backup_image_id: int
    increment_id: int
    disk_id: int
    system_tm: Optional[str] = None

    @property
    def all_disks(self):
        return self.disk_id == -1


@dataclass(frozen=True)
class MonitorArgs:
    """monitor (a DS driver action run from the TM dir): ``dsid``, or ``base64 dsid`` before 6.8."""

    action: str
    dsid: int
    legacy_payload: Optional[str] = None
    system_tm: Optional[str] = None


TmArgs = Union[
    ImageToDiskArgs,
    MkswapArgs,
    MkimageArgs,
    ContextArgs,
    DeleteArgs,
    MvdsArgs,
    CpdsArgs,
    MvArgs,
    MigrateArgs,
    SnapshotArgs,
    ResizeArgs,
    BackupArgs,
    RestoreArgs,
    MonitorArgs,
]

# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_DISK = "host:/<sys_ds>/<vmid>/disk.N"
_USAGE = {
    "clone": "fe_host:SOURCE %s vmid dsid" % _DISK,
    "ln": "fe_host:SOURCE %s vmid dsid" % _DISK,
    "mkswap": "size_mb %s vmid dsid" % _DISK,
    "mkimage": "size_mb format %s vmid dsid" % _DISK,
    "context": "context.sh [file[:target] ...] %s vmid dsid" % _DISK,
    "delete": "host:/<sys_ds>/<vmid>[/disk.N] vmid dsid",
    "mvds": "%s SOURCE vmid dsid" % _DISK,
    "cpds": "%s SOURCE snap_id vmid dsid" % _DISK,
    "mv": "src_host:/<sys_ds>/<vmid>[/disk.N] dst_host:/<sys_ds>/<vmid>[/disk.N] vmid dsid",
    "premigrate": "src_host dst_host /<sys_ds>/<vmid> vmid dsid [system_tm]",
    "snap_create": "%s snap_id vmid dsid" % _DISK,
    "resize": "%s size_mb vmid dsid" % _DISK,
    "prebackup": "host:/<sys_ds>/<vmid> disk_id[:disk_id...] deploy_id bj_id|- vmid dsid",
    "restore": "host:/<sys_ds>/<vmid> vmid backup_image_id increment_id disk_id",
    "monitor": "dsid (driver action on stdin), or base64_xml dsid",
}
for _same, _as in (
    ("postmigrate", "premigrate"),
    ("failmigrate", "premigrate"),
    ("snap_create_live", "snap_create"),
    ("snap_delete", "snap_create"),
    ("snap_revert", "snap_create"),
    ("prebackup_live", "prebackup"),
    ("postbackup", "prebackup"),
    ("postbackup_live", "prebackup"),
):
    _USAGE[_same] = _USAGE[_as]


class _Argv:
    """Positional words of one call plus the context needed for good error messages."""

    def __init__(self, action, args):
        self.action = action
        self.args = tuple(args)

    def fail(self, text):
        raise UsageError("%s: %s (usage: %s %s)" % (self.action, text, self.action, _USAGE[self.action]))

    def expect_count(self, *counts):
        if len(self.args) in counts:
            return
        wanted = " or ".join(str(c) for c in counts)
        given = " ".join(show_value(a) for a in self.args) or "nothing"
        self.fail("expected %s arguments, got %d: %s" % (wanted, len(self.args), given))

    def word(self, index, what):
        value = self.args[index]
        if not isinstance(value, str):
            self.fail("argument %d (%s) is not a string" % (index + 1, what))
        if len(value) > _WORD_MAX:
            self.fail("argument %d (%s) is %d characters long, more than %d"
                      % (index + 1, what, len(value), _WORD_MAX))
        return value

    def integer(self, index, what, minimum=0):
        value = self.word(index, what)
        if not _INT_RE.match(value) or not minimum <= int(value) <= INT_MAX:
            kind = "a non-negative integer" if minimum == 0 else "an integer >= %d" % minimum
            self.fail("argument %d (%s) must be %s, got %s" % (index + 1, what, kind, show_value(value)))
        return int(value)

    def name(self, index, what, value=None):
        value = self.word(index, what) if value is None else value
        if len(value) > 120:
            self.fail("argument %d (%s) is longer than 120 characters" % (index + 1, what))
        self.check(index, what, value, _NAME_CHARS)
        if value.startswith("-"):
            self.fail("argument %d (%s) %s must not start with '-'" % (index + 1, what, show_value(value)))
        return value

    def source(self, index, what):
        """An image SOURCE as tm_iscsi writes it: ``<vg>/<lv>``, the LV of its naming scheme."""
        value = self.word(index, what)
        vg, slash, lv = value.partition("/")
        if not slash or "/" in lv:
            self.fail("argument %d (%s) must be <vg>/<lv>, got %s" % (index + 1, what, show_value(value)))
        self.name(index, what + " VG", vg)
        self.name(index, what + " LV", lv)
        return value

    def host(self, index, what, value=None):
        value = self.word(index, what) if value is None else value
        self.check(index, what, value, _HOST_CHARS)
        if value.startswith("-") or value.startswith("."):
            self.fail("argument %d (%s) %s is not a host name" % (index + 1, what, show_value(value)))
        return value

    def check(self, index, what, value, allowed):
        try:
            _check_chars("argument %d" % (index + 1), what, value, allowed)
        except UsageError as err:
            self.fail(err.message)

    def path(self, index, what, value=None, absolute=True):
        value = self.word(index, what) if value is None else value
        self.check(index, what, value, _PATH_CHARS)
        value = collapse_slashes(value)
        if len(value) > 1:
            value = value.rstrip("/")
        if absolute and not value.startswith("/"):
            self.fail("argument %d (%s) %s is not an absolute path" % (index + 1, what, show_value(value)))
        if value.startswith("-"):
            self.fail("argument %d (%s) %s must not start with '-'" % (index + 1, what, show_value(value)))
        if ".." in value.split("/"):
            self.fail("argument %d (%s) %s contains '..'" % (index + 1, what, show_value(value)))
        return value

    def host_path(self, index, what, form):
        """``host:/path``; form is "disk", "dir" or "any"."""
        value = self.word(index, what)
        host, colon, path = value.partition(":")
        if not colon:
            self.fail("argument %d (%s) must be host:/path, got %s" % (index + 1, what, show_value(value)))
        parsed = HostPath(self.host(index, what + " host", host), self.path(index, what + " path", path))
        if form == "disk" and not parsed.is_disk:
            self.fail("argument %d (%s) must end in /disk.N, got %s" % (index + 1, what, show_value(value)))
        if form == "dir" and parsed.is_disk:
            self.fail("argument %d (%s) must be the VM directory, got disk %s" % (index + 1, what, show_value(value)))
        return parsed

    def check_vm_dir(self, vm_dir, vmid, what):
        # oned names the VM directory <DATASTORE_LOCATION>/<sys_ds>/<vmid>; a mismatch means the
        # words are out of order, and acting on another VM's directory must be impossible.
        if os.path.basename(vm_dir) != str(vmid):
            self.fail("%s %s is not the directory of VM %d" % (what, show_value(vm_dir), vmid))


def _image_to_disk(argv, system_tm):
    argv.expect_count(4)
    image = argv.word(0, "image location")
    host, colon, source = image.partition(":")
    if not colon:
        argv.fail("argument 1 (image location) must be fe_host:SOURCE, got %s" % show_value(image))
    args = ImageToDiskArgs(
        action=argv.action,
        image_host=argv.host(0, "image host", host),
        source=argv.path(0, "image SOURCE", source, absolute=False),
        disk=argv.host_path(1, "disk", "disk"),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _mkswap(argv, system_tm):
    argv.expect_count(4)
    args = MkswapArgs(
        action=argv.action,
        size_mb=argv.integer(0, "size_mb", minimum=1),
        disk=argv.host_path(1, "disk", "disk"),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _mkimage(argv, system_tm):
    argv.expect_count(5)
    args = MkimageArgs(
        action=argv.action,
        size_mb=argv.integer(0, "size_mb", minimum=1),
        format=argv.name(1, "format"),
        disk=argv.host_path(2, "disk", "disk"),
        vmid=argv.integer(3, "vmid"),
        dsid=argv.integer(4, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _context_file(argv, index):
    value = argv.word(index, "context file")
    if value.startswith(("http://", "https://")):
        argv.check(index, "context file URL", value, _URL_CHARS)
        return ContextFile(value)
    path, colon, target = value.partition(":")
    path = argv.path(index, "context file", path)
    if not colon:
        return ContextFile(path)
    # FILES_DS entries arrive as <file>:'<name>', the quotes being literal characters.
    if len(target) >= 2 and target[0] == target[-1] == "'":
        target = target[1:-1]
    argv.check(index, "context file target name", target, _FILE_NAME_CHARS)
    return ContextFile(path, target)


def _context(argv, system_tm):
    if len(argv.args) < 4:
        given = " ".join(show_value(a) for a in argv.args) or "nothing"
        argv.fail("expected at least 4 arguments, got %d: %s" % (len(argv.args), given))
    last = len(argv.args)
    args = ContextArgs(
        action=argv.action,
        context_script=argv.path(0, "context.sh"),
        files=tuple(_context_file(argv, i) for i in range(1, last - 3)),
        disk=argv.host_path(last - 3, "disk", "disk"),
        vmid=argv.integer(last - 2, "vmid"),
        dsid=argv.integer(last - 1, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _delete(argv, system_tm):
    argv.expect_count(3)
    args = DeleteArgs(
        action=argv.action,
        target=argv.host_path(0, "disk or VM directory", "any"),
        vmid=argv.integer(1, "vmid"),
        dsid=argv.integer(2, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.target.vm_dir, args.vmid, "path")
    return args


def _mvds(argv, system_tm):
    argv.expect_count(4)
    args = MvdsArgs(
        action=argv.action,
        disk=argv.host_path(0, "disk", "disk"),
        source=argv.source(1, "image SOURCE"),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _cpds(argv, system_tm):
    argv.expect_count(5)
    args = CpdsArgs(
        action=argv.action,
        disk=argv.host_path(0, "disk", "disk"),
        source=argv.source(1, "new image SOURCE"),
        snap_id=argv.integer(2, "snap_id", minimum=-1),
        vmid=argv.integer(3, "vmid"),
        dsid=argv.integer(4, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _mv(argv, system_tm):
    argv.expect_count(4)
    args = MvArgs(
        action=argv.action,
        src=argv.host_path(0, "source", "any"),
        dst=argv.host_path(1, "destination", "any"),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    if args.src.disk_id != args.dst.disk_id:
        argv.fail(
            "source %s and destination %s are not the same disk or both the VM directory"
            % (show_value(str(args.src)), show_value(str(args.dst)))
        )
    argv.check_vm_dir(args.src.vm_dir, args.vmid, "source path")
    argv.check_vm_dir(args.dst.vm_dir, args.vmid, "destination path")
    return args


def _migrate(argv, system_tm):
    argv.expect_count(5, 6)
    args = MigrateArgs(
        action=argv.action,
        src_host=argv.host(0, "source host"),
        dst_host=argv.host(1, "destination host"),
        vm_dir=argv.path(2, "VM directory"),
        vmid=argv.integer(3, "vmid"),
        dsid=argv.integer(4, "dsid"),
        caller_tm=argv.name(5, "calling system TM") if len(argv.args) == 6 else None,
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.vm_dir, args.vmid, "VM directory")
    return args


def _snapshot(argv, system_tm):
    argv.expect_count(4)
    args = SnapshotArgs(
        action=argv.action,
        disk=argv.host_path(0, "disk", "disk"),
        snap_id=argv.integer(1, "snap_id"),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _resize(argv, system_tm):
    argv.expect_count(4)
    args = ResizeArgs(
        action=argv.action,
        disk=argv.host_path(0, "disk", "disk"),
        size_mb=argv.integer(1, "size_mb", minimum=1),
        vmid=argv.integer(2, "vmid"),
        dsid=argv.integer(3, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.disk.vm_dir, args.vmid, "disk path")
    return args


def _backup(argv, system_tm):
    argv.expect_count(6)
    disk_words = argv.word(1, "disk ids")
    disk_ids = []
    for word in disk_words.split(":"):
        if not _INT_RE.match(word) or not 0 <= int(word) <= INT_MAX:
            argv.fail("argument 2 (disk ids) must be N[:N...], got %s" % show_value(disk_words))
        disk_ids.append(int(word))
    job = argv.word(3, "backup job id")
    args = BackupArgs(
        action=argv.action,
        vm_dir=argv.host_path(0, "VM directory", "dir"),
        disk_ids=tuple(disk_ids),
        deploy_id=argv.name(2, "deploy_id"),
        backup_job_id=None if job == "-" else argv.integer(3, "backup job id"),
        vmid=argv.integer(4, "vmid"),
        dsid=argv.integer(5, "dsid"),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.vm_dir.path, args.vmid, "VM directory")
    return args


def _restore(argv, system_tm):
    argv.expect_count(5)
    args = RestoreArgs(
        action=argv.action,
        vm_dir=argv.host_path(0, "VM directory", "dir"),
        vmid=argv.integer(1, "vmid"),
        backup_image_id=argv.integer(2, "backup image id"),
        increment_id=argv.integer(3, "increment id", minimum=-1),
        disk_id=argv.integer(4, "disk id", minimum=-1),
        system_tm=system_tm,
    )
    argv.check_vm_dir(args.vm_dir.path, args.vmid, "VM directory")
    return args


def _monitor(argv, system_tm):
    argv.expect_count(1, 2)
    if len(argv.args) == 2:
        payload = argv.word(0, "base64 driver action")
        # Only the alphabet is checked here; ds_action decodes it.
        argv.check(0, "base64 driver action", payload, frozenset(_ALNUM + "+/="))
        return MonitorArgs(argv.action, argv.integer(1, "dsid"), payload, system_tm)
    return MonitorArgs(argv.action, argv.integer(0, "dsid"), None, system_tm)


_PARSERS = {
    "clone": _image_to_disk,
    "ln": _image_to_disk,
    "mkswap": _mkswap,
    "mkimage": _mkimage,
    "context": _context,
    "delete": _delete,
    "mvds": _mvds,
    "cpds": _cpds,
    "mv": _mv,
    "premigrate": _migrate,
    "postmigrate": _migrate,
    "failmigrate": _migrate,
    "snap_create": _snapshot,
    "snap_create_live": _snapshot,
    "snap_delete": _snapshot,
    "snap_revert": _snapshot,
    "resize": _resize,
    "prebackup": _backup,
    "prebackup_live": _backup,
    "postbackup": _backup,
    "postbackup_live": _backup,
    "restore": _restore,
    "monitor": _monitor,
}
assert set(_PARSERS) == set(TM_ACTIONS) == set(_USAGE)


def parse_tm_args(action: str, args: Sequence[str]) -> TmArgs:
    """Parse the words after the script path for ``action`` (``"clone"``, ``"CLONE.ssh"``...)."""
    name, system_tm = split_action_name(action)
    return _PARSERS[name](_Argv(name, args), system_tm)


def parse_tm_argv(argv: Sequence[str]) -> TmArgs:
    """Parse a whole ``sys.argv``: the action comes from the script name in ``argv[0]``."""
    if not argv:
        raise UsageError("empty argv: cannot tell which TM action was called")
    name, system_tm = action_from_program(argv[0])
    return _PARSERS[name](_Argv(name, argv[1:]), system_tm)
