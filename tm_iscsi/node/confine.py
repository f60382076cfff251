"""What the node helper, root through sudo for oneadmin, may touch on the storage node: the VGs
node.conf names, LVs that carry tm_iscsi's ownership tag, and new LVs only under tm_iscsi's
naming scheme. oneadmin's sudo rule gives the driver this and nothing more: any other LV, VG or
device is refused in one line, before any change (paths on hosts: paths.py)."""
import argparse
import re

from .. import naming
from . import nodeconf
from .errors import NodeError


def storage_vgs():
    """The VGs of this storage node: node.conf's VGS (comma or blank separated) or VG_NAME.
    A node set up by hand, without node.conf: VGs of tm_iscsi's default name (vg-one-<ds id>)."""
    conf = nodeconf.values()
    listed = [v for v in re.split(r"[\s,]+", conf.get("VGS", "")) if v]
    if not listed and conf.get("VG_NAME"):
        listed = [conf["VG_NAME"]]
    return listed


def vg_allowed(vg):
    listed = storage_vgs()
    return vg in listed if listed else naming.is_default_vg(vg)


def storage_vg(value):
    """argparse type of every storage command's --vg."""
    if not naming.valid_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid VG name")
    if not vg_allowed(value):
        listed = storage_vgs()
        where = (f"VGS/VG_NAME in {nodeconf.PATH}: {', '.join(listed)}" if listed else
                 f"no VGS in {nodeconf.PATH}, so only vg-one-<datastore id>")
        raise argparse.ArgumentTypeError(f"VG {value!r} is not one of this node's tm_iscsi VGs "
                                         f"({where})")
    return value


def require_scheme(vg, lv):
    """Refuse to create an LV whose name is not one tm_iscsi gives its LVs."""
    if not naming.is_scheme_lv(lv):
        raise NodeError(f"refusing to create {vg}/{lv}: tm_iscsi names its LVs img-N, "
                        "vm-N-disk-N, with -snap-N, -backup-N, -base or -map")


def require_owned(lv, verb):
    """Refuse to act on an existing LV that tm_iscsi did not make."""
    if naming.OWNER_TAG not in (lv.tags or []):
        raise NodeError(f"{lv.vg}/{lv.name} is not tm_iscsi's (it has no {naming.OWNER_TAG} tag"
                        f"); refusing to {verb} it")
    return lv
