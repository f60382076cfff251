"""The host cache layers of a VM disk, seen from the front-end: which LUNs a stack needs, the
guards on the storage node that keep dirty data from being lost, and the order of things.

LUNs of a stack (all exported to the one host only):
- the disk's own LV (the clone, or a persistent/volatile disk): always;
- read modes: the image's *base* (`img-N-base`, a thin snapshot of the image, exported writable
  because dm-cache/dm-clone refuse read-only origins, never written) and the clone's region *map*
  (`vm-V-disk-D-map`, which regions the VM wrote, kept next to the clone so any host can
  assemble the stack after a cold move).

Guards, as LV tags on the storage node:
- `tm_iscsi.wb-host=<host>` on the disk's LV while a host holds a write-back cache of it. No
  other host may attach the disk until that host flushed it (a crashed host's activation does so
  at boot), so dirty data is never dropped by a planned operation nor hidden by a crash.
- `tm_iscsi.base=<gen>` on a clone and its map: the base generation the map was made against.
  A map whose clone was written by a path without the map (live migration) is deleted, and a
  disk without a valid map runs without the read layer: never trust a map after another writer.
"""
import json
import secrets

from . import cachemode, log
from .errors import DriverError
from .volumes import Volume

WB_TAG = "tm_iscsi.wb-host="
BASE_GEN_TAG = "tm_iscsi.base="
RETIRED_TAG = "tm_iscsi.retired=yes"
STALE_MAP_TAG = "tm_iscsi.map=stale"
MAP_MIB_MIN = 8


def base_volume(volume, image_lv):
    return Volume(volume.ds, f"{image_lv}-base", "base")


def map_volume(volume):
    return Volume(volume.ds, f"{volume.lv}-map", "map")


def map_size_mib(disk_mib):
    # dm-clone keeps one bit per 64 KiB region plus a small superblock and space maps.
    return MAP_MIB_MIN + int(disk_mib or 0) // 16384


def _storage(ctx, volume):
    return ctx.node(volume.ds.storage_host)


def _info(ctx, volume):
    return _storage(ctx, volume).call("lv-info", "--vg", volume.vg, "--lv", volume.lv)


def _tag_value(tags, prefix):
    for tag in tags or []:
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None


def tag(ctx, volume, add=(), delete=()):
    args = ["--vg", volume.vg, "--lv", volume.lv]
    for t in add:
        args += ["--add", t]
    for t in delete:
        args += ["--delete", t]
    return _storage(ctx, volume).call("lv-tag", *args)


# -- at clone time -------------------------------------------------------------------------------

def prepare_read_layer(ctx, volume, image_lv, disk_mib, vm_id, disk_id):
    """Make sure the image has a usable base and the clone a region map made against it, and
    record the base generation on the clone. Returns the generation, or None (no read layer)."""
    from .tm import storage
    base = base_volume(volume, image_lv)
    info = _info(ctx, base)
    if info.get("exists") and RETIRED_TAG in (info.get("tags") or []):
        log.info(f"{base.vg}/{base.lv} is retired (the image was written); no read cache")
        return None
    gen = _tag_value(info.get("tags"), BASE_GEN_TAG) if info.get("exists") else None
    if not info.get("exists"):
        gen = secrets.token_hex(4)
        storage.snapshot(ctx, volume.ds, image_lv, base.lv, kind="base",
                         image=image_lv.split("-", 1)[1])
        tag(ctx, base, add=[BASE_GEN_TAG + gen])
    elif gen is None:
        gen = secrets.token_hex(4)
        tag(ctx, base, add=[BASE_GEN_TAG + gen])
    mapv = map_volume(volume)
    map_info = _info(ctx, mapv)
    if map_info.get("exists") and _tag_value(map_info.get("tags"), BASE_GEN_TAG) != gen:
        storage.remove(ctx, volume.ds, mapv.lv, with_snapshots=False)
        map_info = {"exists": False}
    if not map_info.get("exists"):
        clone_info = _info(ctx, volume)
        if _tag_value(clone_info.get("tags"), BASE_GEN_TAG) not in (None, gen):
            return None  # the clone predates this base: its unwritten regions may differ
        storage.create(ctx, volume.ds, mapv.lv, map_size_mib(disk_mib), kind="map", vm=vm_id,
                       disk=disk_id)
        tag(ctx, mapv, add=[BASE_GEN_TAG + gen])
    tag(ctx, volume, add=[BASE_GEN_TAG + gen])
    return gen


def retire_base(ctx, ds, image_lv):
    """The image is about to be written (attached persistent, reverted, flattened): its base
    stays for the clones that use it but is never used for a new one."""
    base = Volume(ds, f"{image_lv}-base", "base")
    info = _info(ctx, base)
    if not info.get("exists"):
        return
    exported = [t for t in _storage(ctx, base).call("exports").get("targets", [])
                if t.get("iqn") == base.iqn]
    if exported:
        tag(ctx, base, add=[RETIRED_TAG])
    else:
        from .tm import storage
        storage.remove(ctx, ds, base.lv, with_snapshots=False)


def map_exists(ctx, volume):
    return bool(_info(ctx, map_volume(volume)).get("exists"))


def forget_map(ctx, volume):
    """The clone was (or is about to be) written without its region map: the map is wrong from
    now on, so it goes; the disk runs without the read layer after this."""
    from .tm import storage
    mapv = map_volume(volume)
    if _info(ctx, mapv).get("exists"):
        storage.remove(ctx, volume.ds, mapv.lv, with_snapshots=False)


# -- on a host -----------------------------------------------------------------------------------

def check_wb_guard(ctx, volume, host):
    info = _info(ctx, volume)
    owner = _tag_value(info.get("tags"), WB_TAG)
    if owner and owner != host:
        raise DriverError(f"{volume.vg}/{volume.lv} has unflushed write-back data on {owner}; "
                          f"boot {owner} (its activation flushes it) before using the disk on "
                          f"{host}")
    return owner


def assemble(ctx, host, volume, link_path, mode, image_lv=None):
    """Attach the LUNs `mode` needs and build the stack; returns the mode really assembled."""
    from . import attachment
    node = ctx.node(host)
    read = cachemode.has_read(mode)
    base = gen = None
    if read:
        clone_info = _info(ctx, volume)
        clone_gen = _tag_value(clone_info.get("tags"), BASE_GEN_TAG)
        mapv = map_volume(volume)
        map_info = _info(ctx, mapv)
        base = base_volume(volume, image_lv) if image_lv else None
        base_info = _info(ctx, base) if base else {}
        gen = _tag_value(base_info.get("tags"), BASE_GEN_TAG)
        # A disk grown past its image has regions the base cannot serve.
        fits = int(clone_info.get("size_bytes") or 0) <= int(base_info.get("size_bytes") or 0)
        if not (clone_gen and map_info.get("exists") and gen == clone_gen and fits and
                _tag_value(map_info.get("tags"), BASE_GEN_TAG) == gen and
                STALE_MAP_TAG not in (map_info.get("tags") or [])):
            log.info(f"{volume.vg}/{volume.lv}: no valid region map; assembling without the "
                     "read cache")
            mode = "writeback" if cachemode.has_writeback(mode) else "none"
            read = False
    if cachemode.has_writeback(mode):
        check_wb_guard(ctx, volume, host)
        tag(ctx, volume, add=[WB_TAG + host])
    luns = {}
    devices = {}
    for role, vol in [("clone", volume)] + ([("base", base), ("map", map_volume(volume))]
                                            if read else []):
        attached = attachment.attach_lun(ctx, host, vol)
        devices[role] = attached["stable_path"]
        luns[role] = {"portal": vol.ds.portal, "iqn": vol.iqn, "serial": vol.serial}
    args = ["--name", volume.lv, "--mode", mode, "--clone-dev", devices["clone"],
            "--link", link_path, "--luns-json", json.dumps(luns, sort_keys=True)]
    if cachemode.has_writeback(mode):
        args += ["--wb-size-mib", str(volume.ds.writeback_mib)]
    if read:
        args += ["--base-key", f"{base.vg}.{base.lv}.{gen}", "--base-dev", devices["base"],
                 "--map-dev", devices["map"]]
    result = node.call("stack-assemble", *args, timeout=ctx.settings.copy_timeout)
    log.info(f"{host}:{link_path} -> {result.get('top')} ({mode})")
    return mode


def teardown(ctx, host, volume, flush, image_lv=None, keep_wb_guard=False):
    """Remove the host's stack of `volume` (flushing or dropping its write-back data), then let
    go of the base if the host's read cache of the image no longer needs it. Returns the
    teardown result, or None when the host had no stack of it."""
    from . import attachment
    node = ctx.node(host)
    result = node.call("stack-teardown", "--name", volume.lv, "--flush" if flush else "--drop",
                       timeout=ctx.settings.copy_timeout)
    released = result.get("read_cache_released")
    if image_lv and not result.get("existed"):
        # A re-run after a failure: the stack went the first time, maybe before the base did.
        prefix = f"{volume.vg}.{image_lv}-base."
        stacks = node.call("cache-status").get("stacks", [])
        released = not any((st.get("base_key") or "").startswith(prefix) for st in stacks)
    if released and image_lv:
        attachment.detach_lun(ctx, host, base_volume(volume, image_lv))
    if not keep_wb_guard:
        info_tags = _info(ctx, volume).get("tags") or []
        if _tag_value(info_tags, WB_TAG) == host:
            tag(ctx, volume, delete=[WB_TAG + host])
    return result
