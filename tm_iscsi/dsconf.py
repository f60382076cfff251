"""What tm_iscsi reads from a datastore's template, with defaults, checked once.

| attribute | default | meaning |
|---|---|---|
| ISCSI_HOST | (required) | storage node: SSH target of the node helper, and the iSCSI portal |
| ISCSI_PORTAL | ISCSI_HOST | portal address the hosts log in to, when storage traffic uses another network |
| VG_NAME | vg-one-<ds id> | the VG on the storage node holding the thin pool |
| THIN_POOL | tpool | the thin pool LV in VG_NAME |
| ISCSI_IQN_BASE | iqn.2026-11.io.tm-iscsi | prefix of every target IQN |
| ISCSI_CHAP_USER / ISCSI_CHAP_PASSWORD | unset | CHAP credentials every ACL of this datastore requires |
| MAX_POOL_FILL | 90 (TM_ISCSI_MAX_POOL_FILL) | refuse new LVs above this thin pool fill, in percent |
| WRITEBACK_CACHE_MB | 1024 | size of a disk's write-back cache on its host (never more than the disk) |
| WRITEBACK_CHECKPOINT | 5 | minutes between checkpoints of each write-back disk (system datastore; 0: none) |
| WRITEBACK_ON_HOST_LOSS | refuse | `checkpoint`: the fence hook also runs `tm-iscsi host-lost` (system datastore) |
"""
from dataclasses import dataclass
from typing import Optional

from . import naming, protocol
from .errors import DriverError


# Below 64 MiB (the floor the host shrinks a cache to when its VG is short) a write-back cache
# absorbs little; the upper bound is the node helper's (--wb-size-mib).
WRITEBACK_MIB_DEFAULT = 1024
WRITEBACK_MIB_RANGE = (64, 1 << 20)
# A checkpoint bounds what a lost host takes with it to this many minutes (README, "Write-back
# checkpoints", for the measurements behind the default); a day at most.
CHECKPOINT_MIN_DEFAULT = 5
CHECKPOINT_MIN_MAX = 1440
HOST_LOSS_ACTIONS = ("refuse", "checkpoint")
YES_NO = {"yes": True, "no": False}


@dataclass(frozen=True)
class DatastoreConfig:
    ds_id: int
    storage_host: str
    portal: str
    vg: str
    pool: str
    iqn_base: str
    chap_user: Optional[str]
    chap_password: Optional[str]
    max_fill: int
    cache_mode: str
    writeback_mib: int = 1024
    # Minutes between write-back checkpoints (0: none), and what losing a host for good does
    # to its write-back disks (tm_iscsi.admin.checkpoint).
    writeback_checkpoint_min: int = 5
    on_host_loss: str = "refuse"
    # The placement hook gives the VMs of this datastore's images a SCHED_RANK that prefers the
    # hosts caching them (tm_iscsi.admin.placement).
    cache_aware_placement: bool = False

    def chap_args(self):
        return ["--chap-user", self.chap_user] if self.chap_user else []

    def chap_stdin(self):
        """What export and attach read the secret from: never argv, which `ps` shows."""
        return f"{self.chap_password}\n" if self.chap_user else None


def from_datastore(ds, settings):
    """`ds` is a tm_iscsi.one.objects.Datastore (or anything with template_attr / id)."""
    ds_id = int(ds.id)

    def attr(name, default=None):
        value = ds.template_attr(name)
        return value if value not in (None, "") else default

    host = attr("ISCSI_HOST")
    if not host:
        raise DriverError(f"datastore {ds_id} has no ISCSI_HOST: set it to the storage node "
                          "(onedatastore update)")
    vg = attr("VG_NAME", naming.default_vg(ds_id))
    pool = attr("THIN_POOL", naming.THIN_POOL)
    for what, value in (("ISCSI_HOST", host), ("VG_NAME", vg), ("THIN_POOL", pool)):
        if not naming.valid_name(value):
            raise DriverError(f"datastore {ds_id}: {what}={str(value)[:80]!r} is not a valid name "
                              "(letters, digits, '+_.-', not starting with '-', at most 120)")
    chap_user, chap_password = attr("ISCSI_CHAP_USER"), attr("ISCSI_CHAP_PASSWORD")
    if bool(chap_user) != bool(chap_password):
        raise DriverError(f"datastore {ds_id}: set both ISCSI_CHAP_USER and ISCSI_CHAP_PASSWORD, "
                          "or neither")
    if chap_user and not naming.valid_chap_user(chap_user):
        raise DriverError(f"datastore {ds_id}: ISCSI_CHAP_USER={chap_user[:80]!r} is not a valid CHAP "
                          "user name (letters, digits, ._@:+/=-)")
    if chap_password and not naming.valid_chap_secret(chap_password):
        raise DriverError(f"datastore {ds_id}: ISCSI_CHAP_PASSWORD must be 1-255 printable "
                          "characters without blanks")
    portal = attr("ISCSI_PORTAL", host)
    try:
        protocol.parse_portal(portal)
    except ValueError as err:
        raise DriverError(f"datastore {ds_id}: ISCSI_PORTAL: {err} (a host name or address, "
                          "optionally :PORT)")
    iqn_base = attr("ISCSI_IQN_BASE", naming.DEFAULT_IQN_BASE)
    if not protocol.valid_iqn_base(iqn_base):
        raise DriverError(f"datastore {ds_id}: ISCSI_IQN_BASE={str(iqn_base)[:80]!r} is not an "
                          "IQN prefix (iqn.YYYY-MM.reversed.domain, lower case, no ':', at most "
                          f"{protocol.IQN_BASE_MAX} characters)")
    cache_mode = (attr("CACHE_MODE", "none") or "none").strip().lower()
    if cache_mode not in protocol.MODES:
        raise DriverError(f"datastore {ds_id}: CACHE_MODE={str(cache_mode)[:40]!r} is not one of "
                          f"{', '.join(protocol.MODES)}")
    max_fill = str(attr("MAX_POOL_FILL", settings.max_pool_fill)).strip()
    if not (max_fill.isascii() and max_fill.isdigit() and len(max_fill) <= 3 and
            0 <= int(max_fill) <= 100):
        # 0 is a freeze: no new LV while the pool holds anything.
        raise DriverError(f"datastore {ds_id}: MAX_POOL_FILL={max_fill[:40]!r} must be a "
                          "percentage from 0 to 100")
    max_fill = int(max_fill)
    writeback_mib = attr("WRITEBACK_CACHE_MB", str(WRITEBACK_MIB_DEFAULT)).strip()
    if not (writeback_mib.isascii() and writeback_mib.isdigit() and len(writeback_mib) <= 8 and
            WRITEBACK_MIB_RANGE[0] <= int(writeback_mib) <= WRITEBACK_MIB_RANGE[1]):
        raise DriverError(f"datastore {ds_id}: WRITEBACK_CACHE_MB={writeback_mib[:40]!r} must be a "
                          f"whole number of MiB from {WRITEBACK_MIB_RANGE[0]} to "
                          f"{WRITEBACK_MIB_RANGE[1]}")
    checkpoint_min = str(attr("WRITEBACK_CHECKPOINT", str(CHECKPOINT_MIN_DEFAULT))).strip()
    if not (checkpoint_min.isascii() and checkpoint_min.isdigit() and len(checkpoint_min) <= 5
            and int(checkpoint_min) <= CHECKPOINT_MIN_MAX):
        raise DriverError(f"datastore {ds_id}: WRITEBACK_CHECKPOINT={checkpoint_min[:40]!r} must "
                          f"be a whole number of minutes from 0 (no checkpoints) to "
                          f"{CHECKPOINT_MIN_MAX}")
    on_host_loss = str(attr("WRITEBACK_ON_HOST_LOSS", "refuse")).strip().lower()
    if on_host_loss not in HOST_LOSS_ACTIONS:
        raise DriverError(f"datastore {ds_id}: WRITEBACK_ON_HOST_LOSS={on_host_loss[:40]!r} is "
                          f"not one of {', '.join(HOST_LOSS_ACTIONS)}")
    placement = str(attr("CACHE_AWARE_PLACEMENT", "no")).strip().lower()
    if placement not in YES_NO:
        raise DriverError(f"datastore {ds_id}: CACHE_AWARE_PLACEMENT={placement[:40]!r} must be "
                          "YES or NO")
    return DatastoreConfig(
        ds_id=ds_id, storage_host=host, portal=portal, vg=vg, pool=pool, iqn_base=iqn_base,
        chap_user=chap_user, chap_password=chap_password, max_fill=max_fill,
        cache_mode=cache_mode,
        writeback_mib=int(writeback_mib),
        writeback_checkpoint_min=int(checkpoint_min), on_host_loss=on_host_loss,
        cache_aware_placement=YES_NO[placement],
    )
