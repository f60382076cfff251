"""Boot-time activation: every stack this host recorded comes back, and its write-back cache is
flushed before its disk can be used anywhere else.

After a crash or a reboot the iSCSI sessions are gone (node records are kept, with
node.startup = manual, so iscsid logs in to nothing by itself), the local cache VG may be
inactive and no dm device exists. For each state file: log in to its LUNs again from the node
records (which hold the CHAP credentials, if any), wait for each device to appear with its
expected unit serial, flush its write-back cache on its own (the cache over the clone LUN, nothing
stacked on it, so nothing can use the disk before its clone is complete), then re-assemble the
stack as recorded, clean. dm-cache treats every cached block as dirty after an unclean shutdown, so
the flush writes back at least everything that was dirty. A stack that is already assembled is
left as it is.
"""
import os
import time

from tm_iscsi.node import iscsi, lvm
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

from . import dmsetup, readcache, stack, state, writeback

DEVICE_WAIT = 60
LOGIN_TIMEOUT = 30


def _login(lun):
    host, port = iscsi.parse_portal(lun.portal)
    ip = iscsi.resolve(host)
    if iscsi.sessions_of(lun.iqn):
        return False
    if not iscsi.has_record(lun.iqn):
        raise NodeError(f"no iSCSI node record for {lun.iqn} on this host; attach it again")
    _run.info(f"logging in to {lun.iqn} at {iscsi.portal_arg(ip, port)}")
    iscsi.login(lun.iqn, ip, port, timeout=LOGIN_TIMEOUT)
    return True


def _wait_device(path, lun, deadline):
    while True:
        if os.path.exists(path):
            if lun is None:
                return
            found = iscsi.unit_serial(readcache.kernel_name(path))
            if found == lun.serial:
                return
            if found is not None:
                raise NodeError(f"{path} has unit serial {found}, expected {lun.serial}; not "
                                "assembling on it")
        if time.monotonic() > deadline:
            raise NodeError(f"{path} did not appear within {DEVICE_WAIT}s after the login")
        time.sleep(0.2)


def activate_stack(st, flush_timeout, vg_active):
    logged_in = []
    for role in ("clone", "base", "map"):
        lun = st.luns.get(role)
        if lun is not None and st.devices.get(role):
            if _login(lun):
                logged_in.append(role)
    deadline = time.monotonic() + DEVICE_WAIT
    for role in ("clone", "base", "map"):
        path = st.devices.get(role)
        if path:
            _wait_device(path, st.luns.get(role), deadline)
    if (stack.has_wb(st.mode) or st.read_cache) and st.vg not in vg_active:
        lvm.activate_vg(st.vg)
        vg_active.add(st.vg)
    flushed = 0
    wbn = writeback.dm_name(st.name)
    if stack.has_wb(st.mode) and st.wb is not None and not dmsetup.exists(
            stack.top_name(st.name)):
        dev = dmsetup.info(wbn)
        # Absent (the boot), or left in the cleaner by an activation cut short: flush it alone.
        if dev is None or (not dev.open_count and not writeback.is_writeback(
                dmsetup.table(wbn))):
            rep = lvm.local_report(st.vg)
            if writeback.lvs_present(st.wb, rep):
                for lv_name in (st.wb.data_lv, st.wb.meta_lv):
                    if not rep.get(lv_name).active:
                        lvm.activate(st.vg, lv_name)
                clone = st.devices["clone"]
                result = writeback.recover(wbn, st.wb, clone,
                                           readcache.device_bytes(clone) // 512, flush_timeout)
                flushed = result["dirty_before_blocks"]
    out = stack.assemble(stack.request_of(st))
    return {"name": st.name, "mode": st.mode, "reassembled": not out["kept"],
            "flushed_blocks": flushed, "logged_in": logged_in}


def activate(flush_timeout):
    results, failures = [], []
    vg_active = set()
    for st in state.list_stacks():
        try:
            results.append(activate_stack(st, flush_timeout, vg_active))
        except NodeError as err:
            failures.append(f"{st.name}: {err}")
            results.append({"name": st.name, "mode": st.mode, "error": str(err)})
    if failures:
        raise NodeError(f"activation failed for {len(failures)} of {len(results)} stack(s): "
                        + "; ".join(failures))
    return {"stacks": results}
