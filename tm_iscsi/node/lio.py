"""Everything the node helper knows about LIO: rtslib-fb objects and the saved configuration.

Each exported LV is one iSCSI target with TPG 1, LUN 0 on a block backstore, and one NodeACL per
host initiator: no demo mode and no generated ACLs, so a host reaches only the LUNs it was given.
The live configuration is saved after every change, atomically, because a storage node that
crashes restores exactly that file at boot (`targetctl restore`).
"""
import contextlib
import json
import os
import tempfile
import warnings

from . import locks
from .errors import NodeError

SAVE_FILE = os.environ.get("TM_ISCSI_LIO_SAVEFILE", "/etc/target/saveconfig.json")
TPG_TAG = 1
LUN_INDEX = 0
# Hosts must not learn other hosts' targets through SendTargets either (invariant 5); the
# attribute is missing on old kernels, hence "optional".
_TPG_ATTRIBUTES = {"generate_node_acls": "0", "demo_mode_write_protect": "1",
                   "cache_dynamic_acls": "0"}
_OPTIONAL_TPG_ATTRIBUTES = {"demo_mode_discovery": "0"}
_TMP_PREFIX = ".saveconfig.tm_iscsi."


def _rtslib():
    try:
        # rtslib warns on stderr about its dbroot whenever a backstore exists; that is normal.
        warnings.filterwarnings("ignore", message="Cannot set dbroot")
        import rtslib_fb
    except ImportError:
        raise NodeError("python3-rtslib-fb is not installed on this node; it is needed on the "
                        "storage node only (apt install python3-rtslib-fb)")
    return rtslib_fb


def _root():
    rtslib = _rtslib()
    try:
        return rtslib.RTSRoot()
    except rtslib.RTSLibError as err:
        raise NodeError(f"LIO is not available: {err}; load target_core_mod and "
                        "iscsi_target_mod and mount configfs on /sys/kernel/config")


def _lio_error(doing, err):
    return NodeError(f"LIO: {doing}: {err}")


def _iscsi_targets(root):
    return [t for t in root.targets if t.fabric_module.name == "iscsi"]


def find_target(iqn):
    # A lookup by name, not a walk: one stat of its configfs directory whatever the node exports.
    rtslib = _rtslib()
    try:
        return rtslib.Target(rtslib.FabricModule("iscsi"), iqn, mode="lookup")
    except rtslib.RTSLibNotInCFS:
        return None


def find_backstore(name):
    rtslib = _rtslib()
    try:
        return rtslib.BlockStorageObject(name)
    except rtslib.RTSLibNotInCFS:
        return None


def _same_device(a, b):
    if not a or not b:
        return False
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _attached_targets(so):
    iqns = []
    for lun in so.attached_luns:
        iqn = lun.parent_tpg.parent_target.wwn
        if iqn not in iqns:
            iqns.append(iqn)
    return iqns


def _ensure_backstore(name, dev, serial):
    rtslib = _rtslib()
    so = find_backstore(name)
    if so is not None:
        try:
            current_dev, current_serial = so.udev_path, so.wwn
        except rtslib.RTSLibError:
            # Created but never configured: an export killed right after the mkdir.
            current_dev, current_serial = None, None
        if _same_device(current_dev, dev) and current_serial == serial:
            return so
        users = _attached_targets(so)
        if users:
            raise NodeError(f"LIO backstore {name} already serves {current_dev} with serial "
                            f"{current_serial} for target {', '.join(users)}, not {dev} with "
                            f"serial {serial}; unexport that target first")
        # An unused backstore with other settings is the leftover of an interrupted export.
        so.delete()
    try:
        return rtslib.BlockStorageObject(name, dev=dev, wwn=serial)
    except rtslib.RTSLibError as err:
        raise _lio_error(f"creating block backstore {name} on {dev}", err)


def _set_tpg_attributes(tpg, authentication):
    rtslib = _rtslib()
    wanted = dict(_TPG_ATTRIBUTES, authentication="1" if authentication else "0")
    for key, value in wanted.items():
        if str(tpg.get_attribute(key)) != value:
            tpg.set_attribute(key, value)
    for key, value in _OPTIONAL_TPG_ATTRIBUTES.items():
        try:
            if str(tpg.get_attribute(key)) != value:
                tpg.set_attribute(key, value)
        except rtslib.RTSLibError:
            pass


def _ensure_portal(tpg, ip, port):
    rtslib = _rtslib()
    for portal in tpg.network_portals:
        if portal.ip_address == ip and int(portal.port) == int(port):
            return
    # The portal is part of the export's desired state: a changed --portal-ip replaces it.
    for portal in list(tpg.network_portals):
        portal.delete()
    try:
        rtslib.NetworkPortal(tpg, ip, int(port))
    except rtslib.RTSLibError as err:
        raise _lio_error(f"listening on {ip}:{port}", err)


def _ensure_lun(tpg, so, iqn):
    rtslib = _rtslib()
    for lun in tpg.luns:
        if lun.lun == LUN_INDEX:
            try:
                current = lun.storage_object
            except rtslib.RTSLibBrokenLink:
                # mkdir done, symlink not: an export killed in between. Make it again.
                lun.delete()
                break
            if current.name == so.name and current.plugin == so.plugin:
                return lun
            raise NodeError(f"target {iqn} LUN {LUN_INDEX} is backed by "
                            f"{lun.storage_object.name}, not {so.name}; unexport {iqn} first")
    return rtslib.LUN(tpg, LUN_INDEX, so)


def _acl_has_chap(acl):
    try:
        return bool(acl.chap_userid)
    except Exception:  # noqa: BLE001 - rtslib raises several kinds when auth/ is unreadable
        return False


def _ensure_acl(tpg, lun, initiator, chap, readonly):
    rtslib = _rtslib()
    acl = rtslib.NodeACL(tpg, initiator, mode="any")
    user, password = chap if chap else ("", "")
    if acl.chap_userid != user:
        acl.chap_userid = user
    if acl.chap_password != password:
        acl.chap_password = password
    mapped = None
    for mlun in acl.mapped_luns:
        if mlun.mapped_lun == LUN_INDEX:
            try:
                same = mlun.tpg_lun.lun == lun.lun
            except rtslib.RTSLibBrokenLink:
                same = False  # half-made by an interrupted export
            if same:
                mapped = mlun
            else:
                mlun.delete()
    if mapped is None:
        rtslib.MappedLUN(acl, LUN_INDEX, lun, write_protect=bool(readonly))
    elif mapped.write_protect != bool(readonly):
        mapped.write_protect = bool(readonly)
    return acl


def _initiators(target):
    names = []
    for tpg in target.tpgs:
        for acl in tpg.node_acls:
            names.append(acl.node_wwn)
    return sorted(set(names))


def export(iqn, backstore, dev, serial, initiator, portal_ip="0.0.0.0", port=3260, chap=None,
           readonly=False):
    """Make `dev` LUN 0 of target `iqn` for `initiator` (and keep the target's other initiators).
    Converges from any partial state an interrupted export leaves behind."""
    rtslib = _rtslib()
    _root()   # LIO is loaded, or one line saying how to load it
    try:
        so = _ensure_backstore(backstore, dev, serial)
        target = rtslib.Target(rtslib.FabricModule("iscsi"), iqn, mode="any")
        tpg = rtslib.TPG(target, TPG_TAG, mode="any")
        others_chap = [acl.node_wwn for acl in tpg.node_acls
                       if acl.node_wwn != initiator and _acl_has_chap(acl)]
        if chap is None and others_chap:
            raise NodeError(f"target {iqn} uses CHAP for {', '.join(others_chap)}; export to "
                            f"{initiator} with --chap-user (and its secret) too (turning "
                            "authentication off would open the target to them without it)")
        # Settings and ACL before the TPG is enabled: an enabled TPG must never be reachable by
        # an initiator it was not meant for, even for the moment between two calls.
        _set_tpg_attributes(tpg, authentication=chap is not None)
        _ensure_portal(tpg, portal_ip, port)
        lun = _ensure_lun(tpg, so, iqn)
        _ensure_acl(tpg, lun, initiator, chap, readonly)
        if not tpg.enable:
            tpg.enable = True
        return {"iqn": iqn, "lun": LUN_INDEX, "serial": so.wwn, "port": int(port),
                "initiators": _initiators(target)}
    except rtslib.RTSLibError as err:
        raise _lio_error(f"exporting {dev} as {iqn}", err)


def unexport(iqn, backstore, initiator=None):
    """Remove `initiator`'s ACL; the target and its backstore go too when no ACL is left (or when
    no initiator is given). Returns (removed_target, remaining_initiators)."""
    rtslib = _rtslib()
    _root()
    removed_target = False
    remaining = []
    try:
        target = find_target(iqn)
        if target is not None:
            if initiator is not None:
                for tpg in target.tpgs:
                    for acl in list(tpg.node_acls):
                        if acl.node_wwn == initiator:
                            acl.delete()
            remaining = _initiators(target)
            if initiator is None or not remaining:
                target.delete()
                removed_target = True
                remaining = []
        if find_target(iqn) is None:
            # Also after a crash between the target's and the backstore's removal.
            so = find_backstore(backstore)
            if so is not None and not list(so.attached_luns):
                so.delete()
        return removed_target, remaining
    except rtslib.RTSLibError as err:
        raise _lio_error(f"unexporting {iqn}", err)


def exports():
    """Every iSCSI target with the backstore behind its LUN 0 and the initiators allowed in."""
    root = _root()
    result = []
    for target in _iscsi_targets(root):
        so = None
        for tpg in target.tpgs:
            for lun in tpg.luns:
                if lun.lun == LUN_INDEX:
                    try:
                        so = lun.storage_object
                    except _rtslib().RTSLibBrokenLink:
                        so = None
        result.append({
            "iqn": target.wwn,
            "backstore": so.name if so else None,
            "dev": so.udev_path if so else None,
            "serial": so.wwn if so else None,
            "initiators": _initiators(target),
        })
    return sorted(result, key=lambda t: t["iqn"])


def saved_acls(path=None):
    """What the saved configuration (the file restored at boot) holds: target -> initiators.
    Read as root for `tm-iscsi doctor`, which cannot read the 0600 file as oneadmin."""
    path = path or SAVE_FILE
    out = {"exists": os.path.exists(path), "readable": False, "targets": None}
    if not out["exists"]:
        return out
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return out
    targets = {}
    for target in saved.get("targets", []):
        acls = {acl.get("node_wwn") for tpg in target.get("tpgs", [])
                for acl in tpg.get("node_acls", [])}
        targets[target.get("wwn")] = sorted(a for a in acls if a)
    out.update(readable=True, targets=targets)
    return out


def targets_with_initiator(initiator):
    return [t["iqn"] for t in exports() if initiator in t["initiators"]]


def remove_acl(iqn, initiator):
    """Delete `initiator`'s ACL from target `iqn` (LIO ends its sessions with it). True if there
    was one."""
    rtslib = _rtslib()
    target = find_target(iqn)
    if target is None:
        return False
    removed = False
    try:
        for tpg in target.tpgs:
            for acl in list(tpg.node_acls):
                if acl.node_wwn == initiator:
                    acl.delete()
                    removed = True
    except rtslib.RTSLibError as err:
        raise _lio_error(f"removing {initiator} from {iqn}", err)
    return removed


def users_of_device(dev, backstore=None):
    """[(backstore name, [target iqns])] of LIO backstores on `dev` (or named `backstore`)."""
    root = _root()
    users = []
    for so in root.storage_objects:
        if so.plugin != "block":
            continue
        if so.name == backstore or _same_device(so.udev_path, dev):
            users.append((so.name, _attached_targets(so)))
    return users


def _saved_config(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def config_lock():
    """LIO's configfs is one tree: every change, every walk that decides a change, and the saved
    config are done under this one lock (node-wide), or a concurrent action's half-made target
    breaks the walk ("This TPG does not exist in configFS")."""
    with locks.lock("lio", "config"):
        # rtslib keeps the backstore indexes it saw in a process-wide cache; another process may
        # have added or removed backstores while this one did not hold the lock.
        _forget_backstore_indexes()
        yield


def _forget_backstore_indexes():
    try:
        from rtslib_fb import tcm
    except ImportError:
        return
    cache = getattr(tcm, "bs_cache", None)
    if isinstance(cache, dict):
        cache.clear()


class Changed:
    """The targets and block backstores one call changed: what its save has to refresh."""

    def __init__(self):
        self.targets = set()
        self.backstores = set()

    def add(self, iqn, backstore=None):
        self.targets.add(iqn)
        if backstore:
            self.backstores.add(backstore)

    def __bool__(self):
        return bool(self.targets or self.backstores)


def _merged(saved, changed):
    """The saved config with the entries of `changed` replaced by their live state (or dropped
    when they are gone), the rest kept as it was saved."""
    merged = dict(saved)
    targets = [t for t in saved.get("targets", [])
               if not (t.get("fabric") == "iscsi" and t.get("wwn") in changed.targets)]
    for iqn in sorted(changed.targets):
        target = find_target(iqn)
        if target is not None:
            targets.append(target.dump())
    objects = [so for so in saved.get("storage_objects", [])
               if not (so.get("plugin") == "block" and so.get("name") in changed.backstores)]
    for name in sorted(changed.backstores):
        so = find_backstore(name)
        if so is not None:
            objects.append(so.dump())
    merged["targets"] = targets
    merged["storage_objects"] = objects
    return merged


def _mergeable(saved):
    return (isinstance(saved, dict) and isinstance(saved.get("targets"), list)
            and isinstance(saved.get("storage_objects"), list))


def save_config(path=None, changed=None):
    """Write the live LIO configuration to the saved config if it differs. Atomic (temp file in
    the same directory, fsync, rename, fsync of the directory): a crash leaves the old or the new
    file, never a truncated one. Returns True when the file was rewritten.

    With `changed` (a Changed), only those targets and backstores are read from configfs and
    merged into the saved file: a dump of all of LIO reads every attribute of every target
    (about 0.1 s each on a small node, seconds with a few dozen exports), under the lock every
    export waits for. A missing or unreadable file, or no `changed`, is a full dump."""
    path = path or SAVE_FILE
    # One lock for the file, whatever target changed: the last writer must dump after every
    # change that finished before it, or a concurrent export could vanish from the file.
    with config_lock():
        saved = _saved_config(path)
        if changed is not None and _mergeable(saved):
            live = _merged(saved, changed)
        else:
            live = _root().dump()
        if saved == live:
            return False
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Temp files of a save that was killed: nobody else writes them while we hold the lock.
        for name in os.listdir(directory):
            if name.startswith(_TMP_PREFIX) and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
        try:
            # CHAP secrets are in it: root only, like targetcli's own file.
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                # No indent: json's C encoder serves only unindented output, and the pure-Python
                # one took most of a save's time (targetctl reads either).
                f.write(json.dumps(live, sort_keys=True))
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True
