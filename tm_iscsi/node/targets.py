"""The host's iSCSI targets as a library (the attach/detach commands, the host transactions and
dmcache use it): log in to a target or reuse its session, check the LUN's unit serial, point a
link at it; and the reverse, refusing while a disk is held or mounted.

A host holds at most one session per target: the session is the unit the storage node grants
(one ACL per host) and revokes (fence), and a second session to the same LUN would give the VM two
disks with one serial. Before a LUN is handed to a VM its unit serial is compared with the one
the front-end expects, so a stale or reordered LUN can never become a VM's disk.
"""
import argparse
import os
import re
import time

from . import deadline as _deadline
from . import iscsi, locks, paths
from . import run as _run
from .errors import NodeError
from .naming_args import checked as _checked


_SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,79}$")
# Absolute paths of plain names only: the link goes under a system datastore directory.
_PATH_RE = re.compile(r"^/[A-Za-z0-9_.+@=:/-]{1,4000}$")
# How long udev gets to create the by-path name before the link uses /dev/sdX directly.
BY_PATH_WAIT = 3.0
POLL = 0.1




def _valid_path(value):
    return bool(_PATH_RE.match(value)) and ".." not in value.split("/") and \
        not value.endswith("/")


def _portal(value):
    try:
        iscsi.parse_portal(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))
    return value


IQN = _checked(iscsi.valid_iqn, "iSCSI name (iqn.YYYY-MM.domain[:name])")
SERIAL = _checked(lambda v: bool(_SERIAL_RE.match(v)), "unit serial")
LINK = _checked(_valid_path, "link path (absolute, no '..', letters, digits, _.+@=:/-)")




def _wait_disk(iqn, lun, deadline, rescan_at):
    """The session's SCSI disk for `lun`, once the kernel has probed it. A session whose LUN
    appeared late (mapped after login) is rescanned once, halfway through the wait."""
    rescanned = False
    while True:
        found = iscsi.sessions_of(iqn)
        if not found:
            raise NodeError(f"the iSCSI session to {iqn} went away while waiting for LUN {lun}; "
                            "the storage node may have revoked this host's access")
        session = found[0]
        disk = session.disk(lun)
        if disk is not None and session.state in (None, "LOGGED_IN"):
            return session, disk
        now = time.monotonic()
        if now > deadline:
            state = session.state or "unknown"
            raise NodeError(f"LUN {lun} of {iqn} did not appear within the timeout (session "
                            f"{session.sid} state {state}); is it exported to this host?")
        if not rescanned and now > rescan_at and session.state == "LOGGED_IN":
            iscsi.rescan_session(session.sid)
            rescanned = True
        time.sleep(POLL)


def _stable_path(ip, port, iqn, lun, disk, deadline):
    by_path = iscsi.by_path(ip, port, iqn, lun)
    until = min(deadline, time.monotonic() + BY_PATH_WAIT)
    while True:
        if os.path.realpath(by_path) == disk.device:
            return by_path
        if time.monotonic() > until:
            return disk.device
        time.sleep(POLL)


def replace_symlink(path, target):
    """Point `path` at `target` atomically: a VM starting meanwhile sees the old link or the new
    one, never none."""
    path = paths.checked(path, leaf_may_be_link=True)
    parent = os.path.dirname(path)
    # The VM directory belongs to oneadmin (the KVM driver writes its deployment file there).
    paths.makedirs_owned(parent)
    paths.checked(path, leaf_may_be_link=True)
    if os.path.isdir(path) and not os.path.islink(path):
        raise NodeError(f"{path} is a directory; refusing to replace it with a link")
    if os.path.islink(path) and os.readlink(path) == target:
        return
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tm_iscsi-{os.getpid()}")
    uid, gid = paths.owner_of_tree(path)
    # As oneadmin: the link can replace nothing oneadmin could not replace itself.
    with paths.as_oneadmin():
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        if os.geteuid() == 0:
            os.lchown(tmp, uid, gid)
        try:
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise


def _undo_login(iqn):
    """Leave no session or node record behind a refused attach (and never a half one)."""
    for session in iscsi.sessions_of(iqn):
        for disk in session.disks:
            iscsi.delete_disk(disk.name)
        iscsi.logout_session(session.sid)
    iscsi.delete_records(iqn)


def expected_path(portal, iqn, lun=0):
    """The path attach_target gives LUN `lun` of `iqn` when udev names it in time (it does
    unless the host is overloaded): udev's by-path name under the portal's address."""
    host, port = iscsi.parse_portal(portal)
    return iscsi.by_path(iscsi.resolve(host), port, iqn, lun)


def attach_target(portal, iqn, serial, chap, timeout, link=None, lun=0):
    """Log in to `iqn` (or reuse the session), check LUN `lun` has unit serial `serial`, link
    it at `link` if given. Converges from any state an interrupted attach left."""
    timeout = max(1, int(_deadline.bounded(timeout)))
    host, port = iscsi.parse_portal(portal)
    ip = iscsi.resolve(host)
    deadline = time.monotonic() + timeout
    with locks.lock("iscsi", iqn):
        existing = iscsi.sessions_of(iqn)
        reused = bool(existing)
        if reused:
            _run.info(f"reusing iSCSI session {existing[0].sid} to {iqn}")
        else:
            # Bounded by --timeout: iscsid retries a login on its own, even after iscsiadm is
            # gone, unless the record limits the attempts.
            login_timeout = max(2, min(15, timeout // 2))
            attempts = max(1, timeout // login_timeout)
            iscsi.write_record(iqn, ip, port, chap, login_timeout, attempts)
            _run.info(f"logging in to {iqn} at {iscsi.portal_arg(ip, port)}")
            try:
                iscsi.login(iqn, ip, port, timeout=timeout + 10,
                            initiator=_initiator_or_none())
            except NodeError:
                _undo_login(iqn)
                raise
        try:
            remaining = max(0.0, deadline - time.monotonic())
            session, disk = _wait_disk(iqn, lun, deadline,
                                       rescan_at=time.monotonic() + (0 if reused else
                                                                     remaining / 3))
            if reused:
                # The kernel keeps the size and serial from its first probe; the LUN may have
                # grown (resize) or changed since.
                iscsi.rescan_disk(disk.name)
            found = iscsi.unit_serial(disk.name)
            # Right after a login the disk can show in sysfs before its VPD pages are read: no
            # serial yet is not a wrong serial. Wait for it (bounded), rescanning once.
            rescanned = False
            while found is None and time.monotonic() < deadline:
                time.sleep(0.2)
                if not rescanned:
                    iscsi.rescan_disk(disk.name)
                    rescanned = True
                found = iscsi.unit_serial(disk.name)
            if found != serial:
                raise NodeError(f"LUN {lun} of {iqn} is {disk.device} with unit serial "
                                f"{found or '(none)'}, expected {serial}; not linking it")
        except NodeError:
            if not reused:
                _undo_login(iqn)
            raise
        stable = _stable_path(session.ip or ip, session.port or port, iqn, lun, disk,
                              deadline)
        if link:
            replace_symlink(link, stable)
    return {"device": disk.device, "stable_path": stable, "link": link,
            "session_reused": reused}


def _initiator_or_none():
    try:
        return iscsi.initiator_name()
    except NodeError:
        return None


def _link_verdict(link, iqn, disks):
    """(remove?, note) for the link: only a symlink to this target's LUN is ours to remove."""
    if not os.path.lexists(link):
        return False, None
    if not os.path.islink(link):
        return False, f"{link} is not a symlink; left in place"
    target = os.readlink(link)
    ours = iscsi.by_path_prefix(iqn) in os.path.basename(target)
    if not ours:
        resolved = os.path.realpath(link)
        ours = any(resolved == d.device for d in disks)
    if not ours:
        return False, f"{link} points to {target}, not to a LUN of {iqn}; left in place"
    return True, None


def detach_target(iqn, link=None):
    """Unlink (only a link to this target's LUN), flush and drop the target's disks, log out,
    forget the record. Refuses, changing nothing, while a disk is held or mounted."""
    with locks.lock("iscsi", iqn):
        found = iscsi.sessions_of(iqn)
        disks = [d for s in found for d in s.disks]
        # Refuse before changing anything: a disk under a dm-cache or a mount must not vanish.
        for disk in disks:
            held = iscsi.holders(disk.name)
            if held:
                raise NodeError(f"{disk.device} (LUN {disk.lun} of {iqn}) is in use by "
                                f"{', '.join(held)}; tear that down first")
            if iscsi.mounted(disk.device):
                raise NodeError(f"{disk.device} (LUN {disk.lun} of {iqn}) is mounted; "
                                "unmount it first")
        link_removed, note = False, None
        if link:
            remove, note = _link_verdict(link, iqn, disks)
            if remove:
                os.unlink(link)
                link_removed = True
        for session in found:
            if session.state not in (None, "LOGGED_IN"):
                # A failed session (fenced host, storage gone) cannot take a flush or a SYNCHRONIZE
                # CACHE: both would block until the replacement timeout. Logout tears it down.
                _run.info(f"session {session.sid} to {iqn} is {session.state}; its disks "
                          "cannot be flushed, logging out")
                continue
            for disk in session.disks:
                iscsi.flush(disk.device)
                # Deleting the disk first lets the kernel finish its I/O and tell udev, so no
                # stale /dev/sdX of a logged-out session lingers.
                iscsi.delete_disk(disk.name)
        for session in found:
            _run.info(f"logging out of {iqn} (session {session.sid})")
            iscsi.logout_session(session.sid)
        iscsi.delete_records(iqn)
    return {"logged_out": bool(found), "link_removed": link_removed, "link_note": note}
