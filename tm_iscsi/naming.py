"""Deterministic names of everything tm_iscsi creates, derived from OpenNebula ids only.

Stateless naming is what makes every action re-runnable: a retried clone finds the LV, the target
and the serial it made the first time. The front-end and the node helper both import this module,
so it uses the standard library only."""
import re

from .protocol import OWNER_TAG, owner_tags as lv_tags  # noqa: F401 - one vocabulary

DEFAULT_IQN_BASE = "iqn.2026-11.io.tm-iscsi"
THIN_POOL = "tpool"
# uuid5 namespace of LUN serials: same (vg, lv) -> same serial on every storage node and run.
_SERIAL_NAMESPACE = "6f1c3a52-7d0e-4f55-9a1e-2b8e4c1d9a07"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+_.-]*$")
# A CHAP user name travels in argv (it is no secret); the secret only on stdin, one line, so any
# printable character but the blank is fine. 255 is LIO's limit for both.
_CHAP_USER_RE = re.compile(r"[A-Za-z0-9._@:+/=-]{1,255}")
_CHAP_SECRET_RE = re.compile(r"[\x21-\x7e]{1,255}")


# Every LV tm_iscsi makes carries this tag (lv_tags), which is how the node helper tells its own
# LVs from anybody else's; and has a name of this scheme: an image, a VM's own disk, a snapshot
# of either, a backup's point of a VM disk, a write-back disk's checkpoint, an image's read-cache
# base, a clone's region map, the two names an LV's content has while it is replaced (the replacement being made, the content
# being replaced), where a backup being restored onto a disk is written first, and the snapshot
# an image's directory is read out of (image-extract).
_LV_SCHEME_RE = re.compile(r"^(img-\d{1,12}|vm-\d{1,12}-disk-\d{1,6})"
                           r"(-snap-\d{1,12}|-backup-\d{1,12}|-ckpt)?"
                           r"(-base|-map|-next|-prev|-restore|-extract)?$")
_DEFAULT_VG_RE = re.compile(r"^vg-one-\d{1,12}$")


def is_scheme_lv(name):
    """A name tm_iscsi gives its LVs (img-7, vm-42-disk-0, vm-42-disk-0-snap-3, img-7-base, ...)."""
    return bool(_LV_SCHEME_RE.fullmatch(str(name)))


def is_source_lv(name):
    """An LV an image's SOURCE may name: an image, or a VM disk kept as one (TM_ISCSI_SYNC);
    never a snapshot, a base or a map, which tm_iscsi manages itself."""
    match = _LV_SCHEME_RE.fullmatch(str(name))
    return bool(match) and not match.group(2) and not match.group(3)


def is_default_vg(name):
    return bool(_DEFAULT_VG_RE.fullmatch(str(name)))


def default_vg(ds_id):
    return f"vg-one-{int(ds_id)}"


def image_lv(image_id):
    return f"img-{int(image_id)}"


def disk_lv(vm_id, disk_id):
    """A VM's own disk: a non-persistent clone or a volatile disk."""
    return f"vm-{int(vm_id)}-disk-{int(disk_id)}"


def snapshot_lv(lv, snap_id):
    return f"{lv}-snap-{int(snap_id)}"


def snapshots_among(lv, names):
    """The snapshots of `lv` (`<lv>-snap-N`) among LV `names`."""
    prefix = f"{lv}-snap-"
    return [n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]


def backup_lv(lv, increment):
    """The point a backup read of `lv`: a thin snapshot kept until the next backup of the chain
    (its blocks are what the next increment is computed against)."""
    return f"{lv}-backup-{int(increment)}"


def backup_points(lv, names):
    """{increment: name} of the backup points of `lv` among LV `names`."""
    prefix = f"{lv}-backup-"
    return {int(n[len(prefix):]): n for n in names
            if n.startswith(prefix) and n[len(prefix):].isdigit() and len(n) - len(prefix) <= 12}


def checkpoint_lv(lv):
    """A write-back disk's last checkpoint: a thin snapshot of its clone, crash-consistent."""
    return f"{lv}-ckpt"


def _stem(name, suffix):
    """`name` without `suffix`, or None when it does not end with it."""
    return name[:-len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def checkpoint_of(name):
    """The disk whose checkpoint `name` is, or None."""
    return _stem(name, checkpoint_lv(""))


def checkpoints_among(lv, names):
    """The checkpoint of `lv` and the names it has while it is replaced, among LV `names`."""
    ckpt = checkpoint_lv(lv)
    return [n for n in (ckpt, replacement_lv(ckpt), replaced_lv(ckpt)) if n in names]


def dependents_among(lv, names):
    """What tm_iscsi named after `lv` among LV `names` and removes with it: its snapshots, its
    backup points and its checkpoint."""
    return sorted(snapshots_among(lv, names) + list(backup_points(lv, names).values()) +
                  checkpoints_among(lv, names))


def restore_lv(lv):
    """Where a backup restored onto `lv` (onevm restore) is written, complete before it replaces
    the disk's content."""
    return f"{lv}-restore"


def replacement_lv(lv):
    """Where an LV's new content is made before it takes the LV's name (lv-revert)."""
    return f"{lv}-next"


def replaced_lv(lv):
    """The name an LV's old content has between the swap and its removal (lv-revert)."""
    return f"{lv}-prev"


def replaced_of(name):
    """The LV whose old content `name` holds during a revert, or None."""
    return _stem(name, replaced_lv(""))


def source(vg, lv):
    """The SOURCE oned stores for an image: self-describing, `<vg>/<lv>`."""
    return f"{vg}/{lv}"


def parse_source(value):
    """`<vg>/<lv>` -> (vg, lv); raises ValueError with a one-line reason."""
    parts = str(value).split("/")
    if len(parts) != 2 or not all(valid_name(p) for p in parts):
        raise ValueError(f"SOURCE {value!r} is not <vg>/<lv> as tm_iscsi writes it")
    return parts[0], parts[1]


# A node name as oned's host pool and the datastores give it: a host name or an address (a name
# starting with '-' would be an ssh option).
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})|\[[0-9A-Fa-f:.]+\])$")


def valid_host(name):
    return isinstance(name, str) and bool(_HOST_RE.fullmatch(name))


def valid_name(name):
    return bool(_NAME_RE.fullmatch(str(name))) and len(str(name)) <= 120


def valid_chap_user(value):
    return bool(_CHAP_USER_RE.fullmatch(str(value)))


def valid_chap_secret(value):
    return bool(_CHAP_SECRET_RE.fullmatch(str(value)))


def target_iqn(vg, lv, base=DEFAULT_IQN_BASE):
    """One iSCSI target per exported LV. IQNs are lower-case; `_`/`+` are not allowed in them."""
    suffix = f"{vg}.{lv}".lower().replace("_", "-").replace("+", "-")
    return f"{base}:{suffix}"


def lun_serial(vg, lv):
    """The unit serial LIO reports for the LV (SCSI VPD page 0x80). The host checks it before it
    links a device for a VM, so a stale or reordered LUN is never handed to the wrong VM."""
    import uuid   # only where serials are made: a host that checks them never pays its import
    return str(uuid.uuid5(uuid.UUID(_SERIAL_NAMESPACE), f"{vg}/{lv}"))


def backstore_name(vg, lv):
    return f"{vg}.{lv}"
