"""The host's half of a backup (tm_iscsi.protocol, "backups"): `backup-quiesce` brings the VM's
disks to a point a thin snapshot can hold (write-back layers flushed and kept clean, the guest
frozen when asked); `backup-write` lets the VM go on, then reads each backup point over iSCSI
into the VM's backup directory as OpenNebula's backup datastores expect it:

    <vm dir>/backup/vm.xml            the VM document, base64 (what oned sent the TM action)
    <vm dir>/backup/disk.<id>.<N>     qcow2: the whole disk (N = 0 or a full backup), or the
                                      blocks changed since point N-1

The directory is written as root into a new directory of root's only (oneadmin owns the VM
directory and could swap names in it), and takes its name, and oneadmin's ownership, only
when every file is complete."""
import os
import shutil
import stat
import sys

from .. import protocol
from . import backup_image, paths, targets
from . import run as _run
from .chap import credentials_from_stdin
from .cli import checked_command as command, checked_requests
from .cli import request_option as _request_option
from .cmd_cache import NAME, flush_stacks
from .errors import NodeError, NodeUsageError
from .txn_host import _check_portal, _checked

BACKUP_DIR_NAME = "backup"
STAGING_NAME = ".tm_iscsi-backup"
ATTACH_TIMEOUT = 60
VIRSH = ["virsh", "-c", "qemu:///system"]
# What each FS_FREEZE does to the domain, and its undoing.
FREEZE_ARGV = {"AGENT": ("domfsfreeze", "domfsthaw"), "SUSPEND": ("suspend", "resume")}
_DOMAIN_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _check_domain(domain):
    if domain is not None and (not 0 < len(domain) <= 64 or set(domain) - _DOMAIN_CHARS or
                               domain.startswith("-")):
        raise NodeUsageError(f"domain {domain[:40]!r} is not a libvirt domain name")


def freeze_argv(mode, domain, undo=False):
    return [*VIRSH, FREEZE_ARGV[mode][1 if undo else 0], domain]


# -- backup-quiesce -----------------------------------------------------------------------------

def _check_quiesce(req):
    for name in req.stacks:
        _checked(NAME, name)
    _check_domain(req.domain)


@command(protocol.BACKUP_QUIESCE, "flush a VM's write-back stacks (kept clean) and freeze it")
def backup_quiesce(args):
    (req,) = checked_requests(protocol.BackupQuiesce, args.request[:1], _check_quiesce)
    flushed = flush_stacks(req.stacks, req.flush_seconds) if req.stacks else []
    if req.freeze != "NONE":
        _run.info(f"freezing {req.domain} ({req.freeze})")
        _run.run(freeze_argv(req.freeze, req.domain), timeout=120,
                 what=f"FS_FREEZE={req.freeze} of {req.domain}")
    return {"stacks": flushed, "frozen": req.freeze}


backup_quiesce.configure = _request_option


# -- backup-write -------------------------------------------------------------------------------

def _check_write(req):
    _check_portal(req.portal)
    for name in req.resume:
        _checked(NAME, name)
    _check_domain(req.domain)
    if os.path.basename(req.dir) != BACKUP_DIR_NAME:
        raise NodeUsageError(f"{req.dir[:120]} is not a VM's backup directory (<vm dir>/"
                             f"{BACKUP_DIR_NAME})")
    _checked(targets.LINK, req.dir)
    paths.checked(req.dir)
    for item in req.files:
        if item.portal is not None:
            _check_portal(item.portal)
        _checked(targets.IQN, item.lun.iqn)
        _checked(targets.SERIAL, item.lun.serial)


def _release_vm(req):
    """The VM goes on: thawed, and its stacks caching writes again."""
    from dmcache import stack
    problems = []
    if req.thaw != "NONE":
        result = _run.run(freeze_argv(req.thaw, req.domain, undo=True), timeout=120, check=False)
        if result.returncode != 0:
            problems.append(f"{req.domain} could not be thawed: {_run.last_line(result.stderr)}")
    for name in req.resume:
        try:
            stack.resume_writeback(name)
        except NodeError as err:
            problems.append(str(err))
    return problems


def _open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _fresh_staging(vm_fd):
    # Left by a run that stopped half-way.
    _remove_entry(vm_fd, STAGING_NAME)
    os.mkdir(STAGING_NAME, 0o700, dir_fd=vm_fd)
    fd = os.open(STAGING_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=vm_fd)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise NodeError("the backup staging directory was replaced while it was made; "
                        "run the backup again")
    return fd


def _write_file(req, item, chap, ranges, dir_fd):
    name = f"disk.{item.disk_id}.{item.increment}"
    attached = targets.attach_target(item.portal or req.portal, item.lun.iqn, item.lun.serial,
                                     chap, ATTACH_TIMEOUT)
    try:
        device = attached["stable_path"]
        if item.delta:
            changed = ranges.get(item.disk_id, [])
            _run.info(f"writing {name}: {len(changed)} changed range(s), "
                      f"{sum(n for _, n in changed) >> 20} MiB")
            read = backup_image.write_delta(device, dir_fd, name, item.size_bytes, changed)
        else:
            _run.info(f"writing {name}: the whole disk ({item.size_bytes >> 20} MiB)")
            read = backup_image.write_full(device, dir_fd, name)
    finally:
        targets.detach_target(item.lun.iqn, None)
    size = os.stat(name, dir_fd=dir_fd).st_size
    return {"disk_id": item.disk_id, "file": name, "bytes_read": read, "file_bytes": size}


def _put_vm_xml(dir_fd, text):
    fd = os.open("vm.xml", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                 dir_fd=dir_fd)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def _hand_over(vm_fd, dir_fd):
    """The staging directory becomes <vm dir>/backup, oneadmin's (the backup datastore's
    driver reads it as oneadmin and postbackup removes it)."""
    uid, gid = paths.owner_of_tree(os.path.join(f"/proc/{os.getpid()}/fd/{vm_fd}", "x"))
    for name in os.listdir(dir_fd):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    os.fchmod(dir_fd, 0o755)
    os.fchown(dir_fd, uid, gid)
    # What an earlier backup left (postbackup removes it; a failed one may not have run).
    _remove_entry(vm_fd, BACKUP_DIR_NAME)
    os.rename(STAGING_NAME, BACKUP_DIR_NAME, src_dir_fd=vm_fd, dst_dir_fd=vm_fd)


def _remove_entry(vm_fd, name):
    """`name` in the VM directory gone, whatever it is (rmtree never follows a link it finds)."""
    try:
        st = os.lstat(name, dir_fd=vm_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=vm_fd)
    else:
        os.unlink(name, dir_fd=vm_fd)


def _read_payload(stream, chunk=1 << 20):
    """stdin up to its end, refused past the protocol's bound (read in pieces: one read of the
    bound would ask for that much memory at once)."""
    parts, total = [], 0
    while True:
        data = stream.read(chunk)
        if not data:
            return b"".join(parts)
        total += len(data)
        if total > protocol.MAX_PAYLOAD_BYTES:
            raise NodeUsageError("the backup payload on stdin is larger than any backup's")
        parts.append(data)


@command(protocol.BACKUP_WRITE, "let the VM go on, then write its backup points as qcow2 files")
def backup_write(args):
    (req,) = checked_requests(protocol.BackupWrite, args.request[:1], _check_write)
    chap = credentials_from_stdin(req.chap_user)
    payload = _read_payload(getattr(sys.stdin, "buffer", sys.stdin))
    try:
        vm_xml, ranges = protocol.parse_backup_payload(payload or b'{"vm_xml":"","ranges":{}}')
    except protocol.ProtocolError as err:
        _release_vm(req)
        raise NodeUsageError(str(err))
    problems = _release_vm(req)
    if problems:
        raise NodeError("; ".join(problems))
    if not req.files:
        return {"dir": None, "files": []}
    vm_dir = os.path.dirname(req.dir)
    paths.makedirs_owned(vm_dir)
    vm_fd = _open_dir(paths.checked(vm_dir))
    try:
        dir_fd = _fresh_staging(vm_fd)
        try:
            _put_vm_xml(dir_fd, vm_xml)
            written = [_write_file(req, item, chap, ranges, dir_fd) for item in req.files]
            _hand_over(vm_fd, dir_fd)
        except BaseException:
            shutil.rmtree(STAGING_NAME, dir_fd=vm_fd, ignore_errors=True)
            raise
        finally:
            os.close(dir_fd)
    finally:
        os.close(vm_fd)
    return {"dir": req.dir, "files": written}


backup_write.configure = _request_option
