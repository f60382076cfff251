"""The host's two transactions (tm_iscsi.protocol): `host-attach` logs in to every LUN of an
action's disks, checks each unit serial, builds the cache stacks and points the links at them;
`host-detach` takes that down. One call each; idempotent as a whole (every step keeps what is
already right), so a re-run after a failure or a kill converges.

The front-end says which initiator name the storage node exported to; a host whose name is
another (re-installed, renamed) answers with its real name before it changes anything, so the
front-end can export again instead of failing on a login the target refuses."""
import sys

from dmcache import orphans, readcache, stack, state

from .. import protocol
from ..protocol import has_read
from . import deadline, iscsi, lvm, paths, vmdir
from . import run as _run
from .chap import credentials_from_stdin
from .cli import answer, checked_command as command, checked_requests, each_request
from .cli import request_option as _request_option
from .cmd_cache import KEY, NAME
from .targets import (IQN, LINK, SERIAL, attach_target, detach_target, expected_path,
                      replace_symlink)
from .errors import NodeError, NodeUsageError

MIB = 1024 * 1024
ATTACH_TIMEOUT = 60
ROLES = ("clone", "base", "map")
# More would only queue on iscsiadm's database lock.
LOGIN_THREADS = 4


def _checked(check, value):
    try:
        return check(value)
    except Exception as err:  # argparse types raise ArgumentTypeError
        raise NodeUsageError(str(err))


def _check_luns(luns):
    for lun in luns.values():
        _checked(IQN, lun.iqn)
        _checked(SERIAL, lun.serial)


def _check_path(path):
    """A link or VM directory: of the accepted form, and inside the datastores directory (checked
    before any login or change)."""
    _checked(LINK, path)
    paths.checked(path, leaf_may_be_link=True)


def _check_portal(portal):
    try:
        iscsi.parse_portal(portal)
    except ValueError as err:
        raise NodeUsageError(str(err))


def _own_initiator():
    try:
        return iscsi.initiator_name()
    except NodeError:
        return None


# -- host-attach --------------------------------------------------------------------------------

def _check_attach(req):
    _check_portal(req.portal)
    if req.initiator is not None:
        _checked(IQN, req.initiator)
    serials = {}
    for disk in req.disks:
        _checked(NAME, disk.name)
        _check_luns(disk.luns)
        for lun in disk.luns.values():
            if serials.setdefault(lun.iqn, lun.serial) != lun.serial:
                raise NodeUsageError(f"LUN {lun.iqn} is given two unit serials")
        if disk.link is not None:
            _check_path(disk.link)
        if disk.base_key is not None:
            _checked(KEY, disk.base_key)
        if disk.wb_size_mib is not None and not 1 <= disk.wb_size_mib <= 1 << 24:
            raise NodeUsageError(f"wb_size_mib {disk.wb_size_mib} is out of range")
        if disk.size_bytes is not None and not 1 <= disk.size_bytes < 1 << 60:
            raise NodeUsageError(f"size_bytes {disk.size_bytes} is out of range")


def _stack_request(req, disk, devices, wb_made=False):
    return stack.Request(
        name=disk.name, mode=disk.mode, clone_dev=devices["clone"],
        base_key=disk.base_key if has_read(disk.mode) else None,
        base_dev=devices.get("base"), map_dev=devices.get("map"),
        wb_size_bytes=disk.wb_size_mib * MIB if disk.wb_size_mib else None, link=disk.link,
        wb_epoch=disk.wb_epoch, wb_made=wb_made,
        luns={role: state.Lun(req.portal, lun.iqn, lun.serial)
              for role, lun in disk.luns.items()})


def _require_cache_vg(vg):
    # An active LV of it in /dev says the VG is there without a full `vgs` (the stack reads it
    # under its locks anyway).
    if not lvm.has_active_lv(vg) and lvm.local_report(vg, missing_ok=True) is None:
        raise NodeError(f"the local cache VG {vg} does not exist on this host; run "
                        f"cache-init --device DISK --vg {vg} first")


def _assemble(req, disk, devices, wb_made=False):
    if disk.mode == "none":
        if disk.link:
            replace_symlink(disk.link, devices["clone"])
        return {"name": disk.name, "mode": "none", "top": devices["clone"], "link": disk.link}
    request = _stack_request(req, disk, devices, wb_made)
    _require_cache_vg(request.vg)
    built = stack.assemble(request)
    return {"name": disk.name, "mode": disk.mode, "top": built.get("top"), "link": disk.link}


def _prepare(req):
    """Each new write-back stack's LVs made while the LUNs are logged in to (stack.prepare);
    the stacks it made."""
    prepared = []
    for disk in req.disks:
        if not protocol.has_writeback(disk.mode) or not disk.size_bytes:
            continue
        # The paths the LUNs will have (assemble copes with other ones).
        request = _stack_request(req, disk, {role: expected_path(req.portal, lun.iqn)
                                             for role, lun in disk.luns.items()})
        _require_cache_vg(request.vg)
        if stack.prepare(request, disk.size_bytes):
            prepared.append(request)
    return prepared


@command(protocol.HOST_ATTACH, "log in to an action's LUNs, check them, build the stacks, link")
def host_attach(args):
    requests = checked_requests(protocol.HostAttach, args.request, _check_attach)
    if args.unpack_dir is not None:
        _check_path(args.unpack_dir)
    chaps = [credentials_from_stdin(req.chap_user) for req in requests]
    mine = _own_initiator()
    if any(req.initiator is not None and mine is not None and mine != req.initiator
           for req in requests):
        # oned's record of this host's name is stale: say so before anything changes here.
        return answer([{"initiator": mine, "initiator_mismatch": True, "disks": []}
                       for _ in requests])
    orphans.resume_orphans()
    if args.unpack_dir is not None:
        # A live migration's destination: the VM directory first, the disks' links go into it.
        vmdir.unpack(args.unpack_dir, getattr(sys.stdin, "buffer", sys.stdin))
    return answer([_attach(req, chap, mine) for req, chap in zip(requests, chaps)])


def _attach(req, chap, mine):
    wanted = {}   # iqn -> serial, in the disks' order
    for disk in req.disks:
        for role in ROLES:
            lun = disk.luns.get(role)
            if lun is not None:
                wanted.setdefault(lun.iqn, lun.serial)
    prepared = []
    try:
        paths_of = _attach_luns(req.portal, wanted, chap,
                                meanwhile=lambda: prepared.extend(_prepare(req)))
        out = []
        for disk in req.disks:
            devices = {role: paths_of[lun.iqn] for role, lun in disk.luns.items()}
            made = any(p.name == disk.name for p in prepared)
            out.append(_assemble(req, disk, devices, wb_made=made))
            # Assembled, or taken back by assemble itself when it failed.
            prepared = [p for p in prepared if p.name != disk.name]
    except BaseException:
        for request in prepared:
            try:
                stack.discard(request)
            except NodeError as err:
                _run.info(f"could not take back the stack {request.name} made for this call: "
                          f"{err}; host-detach removes it")
        raise
    return {"initiator": mine, "initiator_mismatch": False, "disks": out}


def _attach_luns(portal, wanted, chap, meanwhile=None):
    """iqn -> stable path of every LUN, all attached at once: iscsiadm's database lock still
    takes the logins one at a time, but the waits for the kernel's disk, its serial and udev's
    name (half of an attach) overlap, and so does `meanwhile()`, run in this thread. A failure
    is raised once every attach has ended."""
    def attach(iqn):
        deadline.check(f"attaching {iqn}")
        return attach_target(portal, iqn, wanted[iqn], chap, ATTACH_TIMEOUT)["stable_path"]

    if len(wanted) <= 1 and meanwhile is None:
        return {iqn: attach(iqn) for iqn in wanted}
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max(1, min(LOGIN_THREADS, len(wanted)))) as pool:
        futures = {iqn: pool.submit(attach, iqn) for iqn in wanted}
        if meanwhile is not None:
            meanwhile()
    for future in futures.values():
        if future.exception() is not None:
            raise future.exception()
    return {iqn: future.result() for iqn, future in futures.items()}


def _host_attach_options(p):
    _request_option(p)
    p.add_argument("--unpack-dir", metavar="PATH",
                   help="first unpack the VM directory streamed on stdin (after any CHAP "
                        "secrets) into PATH")


host_attach.configure = _host_attach_options


# -- host-detach --------------------------------------------------------------------------------

def _base_in_use(prefix):
    return any((st.base_key or "").startswith(prefix) for st in state.list_stacks())


@command(protocol.HOST_DETACH, "tear an action's stacks down (flush or drop), log out, unlink")
def host_detach(args):
    return each_request(protocol.HostDetach, args.request, _check_detach, _detach,
                        prepare=orphans.resume_orphans)


def _check_detach(req):
    _check_portal(req.portal)
    if req.remove_dir is not None:
        _check_path(req.remove_dir)
    for disk in req.disks:
        _checked(NAME, disk.name)
        _check_luns(disk.luns)
        if disk.link is not None:
            _check_path(disk.link)
        if disk.base_prefix is not None:
            _checked(KEY, disk.base_prefix)


def _detach(req):
    out = []
    for disk in req.disks:
        deadline.check(f"tearing down {disk.name}")
        torn = stack.teardown(disk.name, disk.flush, deadline.bounded(stack.FLUSH_TIMEOUT))
        if torn.get("existed"):
            _run.info(f"stack {disk.name} removed ({'flushed' if disk.flush else 'dropped'})")
        detach_target(disk.luns["clone"].iqn, disk.link)
        if "map" in disk.luns:
            detach_target(disk.luns["map"].iqn)
        released = False
        if disk.base_prefix and "base" in disk.luns and not _base_in_use(disk.base_prefix):
            try:
                readcache.release_idle(disk.base_prefix)
                detach_target(disk.luns["base"].iqn)
                released = True
            except NodeError as err:
                # The disk itself is released; the base LUN stays for whoever still holds it.
                _run.info(f"base LUN {disk.luns['base'].iqn} kept: {err}")
        out.append({"name": disk.name, "existed": bool(torn.get("existed")),
                    "flushed": bool(torn.get("flushed")),
                    "dropped_dirty_blocks": torn.get("dropped_dirty_blocks", 0),
                    "base_released": released})
    removed = None
    if req.remove_dir:
        from .cmd_vmdir import remove_path
        removed = remove_path(req.remove_dir)["removed"]
    return {"initiator": _own_initiator(), "disks": out, "dir_removed": removed}


host_detach.configure = _request_option

