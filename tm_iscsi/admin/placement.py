"""Cache-aware placement: what placing a VM on each host would cost, given what the host's caches
already hold (`tm-iscsi estimate`), and the SCHED_RANK that makes oned's scheduler prefer the
hosts that hold most of a VM's images (the placement hook, `tm-iscsi-hook place`).

The figures per host come from oned's host template, where the host probe (tm_iscsi.hostfacts)
puts them every 600 s, the same figures the scheduler ranks by; `live=True` asks every host now.
Costs are for one full read of each image disk: what the host would fetch over iSCSI (all of an
image it holds none of, the rest of one it holds part of), the local cache space the new layers
need (a read cache the size of the image where the host has none; the write-back cache of each
write-back disk) and what the cache VG keeps free after that."""
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional, Tuple

from .. import cachemode, hostfacts, protocol
from ..errors import DriverError
from ..one.errors import OneError
from . import status as status_mod

# Placement only makes sense on hosts oned would deploy to.
_PLACEABLE = ("MONITORED",)
# oned does not know the VM's modes before it is placed: a disk's CACHE_MODE, else its image
# datastore's.


@dataclass(frozen=True)
class ImageDisk:
    image_id: int
    name: str
    size_mib: int
    mode: str
    writeback_mib: int


def _image_by_ref(cloud, disk):
    """The image a template DISK names (IMAGE_ID, or IMAGE with IMAGE_UNAME/IMAGE_UID), or None
    for a volatile disk."""
    images = cloud.images()
    image_id = (disk.findtext("IMAGE_ID") or "").strip()
    if image_id:
        for image in images:
            if str(image.id) == image_id:
                return image
        raise DriverError(f"the template's disk names image {image_id}, which oned does not have")
    name = (disk.findtext("IMAGE") or "").strip()
    if not name:
        return None
    owner = (disk.findtext("IMAGE_UNAME") or "").strip()
    uid = (disk.findtext("IMAGE_UID") or "").strip()
    found = [i for i in images if i.name == name and (not owner or i.text("UNAME") == owner)
             and (not uid or i.text("UID") == uid)]
    if len(found) != 1:
        raise DriverError(f"the template's disk names image {name!r}"
                          f"{' of ' + owner if owner else ''}: oned has {len(found)} such images "
                          "(give IMAGE_ID or IMAGE_UNAME)")
    return found[0]


def image_disks(cloud, disk_elements):
    """The iscsi_lvm image disks among DISK elements, with their sizes and cache modes."""
    out = []
    for disk in disk_elements:
        image = _image_by_ref(cloud, disk)
        if image is None:
            continue
        try:
            config = cloud.datastore(image.datastore_id)
        except DriverError:
            continue   # another driver's image: none of tm_iscsi's caches hold it
        mode = (disk.findtext("CACHE_MODE") or config.cache_mode or "none").strip().lower()
        if mode not in protocol.MODES:
            raise DriverError(f"disk of image {image.id}: CACHE_MODE={mode[:40]!r} is not one of "
                              f"{', '.join(protocol.MODES)}")
        out.append(ImageDisk(image.id, image.name or "", int(image.size_mb or 0), mode,
                             config.writeback_mib))
    return out


def disks_of_template(cloud, template_id):
    try:
        element = cloud.one.template_info(template_id)
    except OneError as err:
        raise DriverError(f"template {template_id}: {err}")
    return image_disks(cloud, element.findall("TEMPLATE/DISK"))


def disks_of_image(cloud, image_id):
    disk = ET.Element("DISK")
    ET.SubElement(disk, "IMAGE_ID").text = str(int(image_id))
    return image_disks(cloud, [disk])


def _live_facts(cloud, host):
    answer = status_mod.cache_status(cloud, host.name)
    if "error" in answer or answer.get("installed") is False:
        return {"state": f"error: {answer.get('error', 'no cache layer')}", "images": {}}
    template = ET.Element("TEMPLATE")
    for name, value in hostfacts.facts(answer, time.time()):
        ET.SubElement(template, name).text = value
    return hostfacts.of_host(template)


def estimate(cloud, disks, live=False, now=None):
    """{"disks": [...], "hosts": [rows, best first], "sched_rank": expression}."""
    now = time.time() if now is None else now
    rows = []
    for host in cloud.hosts():
        if host.state not in _PLACEABLE:
            continue
        facts = _live_facts(cloud, host) if live else host.cache
        rows.append(_row(host, facts, disks, now))
    rows.sort(key=_order)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"disks": [d.__dict__ for d in disks], "hosts": rows,
            "sched_rank": hostfacts.rank_expression(d.image_id for d in disks
                                                    if protocol.has_read(d.mode)),
            "live": live}


def _row(host, facts, disks, now):
    images = facts.get("images") or {}
    known = facts.get("state") == hostfacts.STATE_OK
    cached = over_iscsi = need = 0
    for disk in disks:
        local = min(images.get(disk.image_id, 0), disk.size_mib) \
            if protocol.has_read(disk.mode) else 0
        cached += local
        over_iscsi += disk.size_mib - local
        if protocol.has_read(disk.mode) and local == 0:
            need += disk.size_mib
        if protocol.has_writeback(disk.mode):
            need += disk.writeback_mib
    free = facts.get("free_mib")
    unused = facts.get("unused_mib") or 0
    after = free - need if free is not None else None
    if not known:
        fits = "unknown"
    elif after >= 0:
        fits = "yes"
    elif after + unused >= 0:
        fits = "after evicting unused read caches"
    else:
        fits = "no: the layers that do not fit are left out"
    at = facts.get("at")
    return {"host": host.name, "id": host.id, "state": facts.get("state") or "not reported",
            "age_s": int(now - at) if at else None,
            "cached_mib": cached, "iscsi_read_mib": over_iscsi, "cache_need_mib": need,
            "cache_free_mib": free, "cache_free_after_mib": after, "fits": fits,
            "sched_rank": sum(images.get(d.image_id, 0) for d in disks
                              if protocol.has_read(d.mode))}


def _order(row):
    """Hosts with figures first; then least read over iSCSI; then most cache space left."""
    known = row["cache_free_after_mib"] is not None
    return (not known, row["iscsi_read_mib"], -(row["cache_free_after_mib"] or 0), row["id"])


# -- the placement hook ------------------------------------------------------------------------

# Marks a SCHED_RANK the hook set, so it may replace it (after an image change) but never one
# the user wrote.
AUTO_MARK = "TM_ISCSI_SCHED_RANK"


@dataclass(frozen=True)
class Placement:
    vm_id: int
    action: str                    # "set", "unchanged", "user's own", "not asked"
    sched_rank: Optional[str]
    images: Tuple[int, ...]


def place(cloud, vm):
    """Give a pending VM a cache-aware SCHED_RANK when one of its images' datastores asks for
    it (CACHE_AWARE_PLACEMENT = YES) and the user set none of their own."""
    asking = []
    for disk in vm.disks:
        if disk.image_id is None or disk.is_volatile:
            continue
        try:
            config = cloud.datastore(disk.datastore_id)
            mode = cachemode.requested(disk, config)
        except (DriverError, OneError):
            continue   # another driver's disk, or one its deploy will refuse
        if config.cache_aware_placement and protocol.has_read(mode):
            asking.append(disk.image_id)
    images = tuple(sorted(set(asking)))
    if not images:
        return Placement(vm.id, "not asked", None, ())
    wanted = hostfacts.rank_expression(images)
    have = vm.text("USER_TEMPLATE/SCHED_RANK")
    mark = vm.text(f"USER_TEMPLATE/{AUTO_MARK}")
    if have and have != mark:
        return Placement(vm.id, "user's own", have, images)
    if have == wanted:
        return Placement(vm.id, "unchanged", wanted, images)
    from .views import one_template
    cloud.one.vm_update(vm.id, one_template({"SCHED_RANK": wanted, AUTO_MARK: wanted}),
                        merge=True)
    return Placement(vm.id, "set", wanted, images)
