"""`tm-iscsi status` and `tm-iscsi cache-stats`: what the datastores, storage nodes and hosts hold
now. Read-only; a node that does not answer is shown as such, the rest is still reported."""
import time

from .. import protocol
from ..errors import DriverError

# The node helper of a host without the cache layers has no cache-status command.
_UNKNOWN_COMMAND = "invalid choice"
# A status must come back even when a host hangs (a fenced host's LVM scan blocks on its failed
# sessions until the replacement timeout): a short limit per question.
QUERY_TIMEOUT = 20


def cache_status(cloud, host):
    """The host's cache-status answer; {"installed": False} when its helper has no cache layer,
    {"error": ...} when it does not answer."""
    try:
        answer = cloud.node(host).call("cache-status", timeout=QUERY_TIMEOUT)
    except DriverError as err:
        if _UNKNOWN_COMMAND in str(err):
            return {"installed": False}
        return {"error": str(err)}
    answer = dict(answer)
    answer["installed"] = True
    return answer


def gather(cloud):
    data = {"datastores": [], "pools": [], "exports": [], "hosts": [], "writeback": [],
            "problems": []}
    for entry in cloud.datastores():
        cfg = entry.config
        data["datastores"].append({
            "id": entry.id, "name": entry.view.name,
            "type": "system" if entry.is_system else "image",
            "storage": cfg.storage_host if cfg else None, "vg": cfg.vg if cfg else None,
            "pool": cfg.pool if cfg else None, "cache_mode": cfg.cache_mode if cfg else None,
            "error": entry.error})
    hosts = cloud.hosts()
    host_of = {h.initiator: h.name for h in hosts if h.initiator}
    exported_by = {}
    for group in cloud.storage_groups():
        row = {"storage": group.host, "vg": group.vg, "pool": group.pool,
               "datastores": list(group.ds_ids)}
        try:
            row.update(cloud.node(group.host).call("pool-status", "--vg", group.vg,
                                                   "--pool", group.pool))
        except DriverError as err:
            row["error"] = str(err)
            data["problems"].append(str(err))
        data["pools"].append(row)
        exported_by.setdefault(group.host, set()).update(group.iqn_bases)
    host_sessions = {}
    for host in hosts:
        row = {"name": host.name, "id": host.id, "state": host.state,
               "initiator": host.initiator, "sessions": None, "cache": None}
        try:
            row["sessions"] = cloud.node(host.name).call(
                "sessions", timeout=QUERY_TIMEOUT).get("sessions", [])
        except DriverError as err:
            row["error"] = str(err)
            data["problems"].append(str(err))
            data["hosts"].append(row)
            continue
        if not row["initiator"]:
            row["initiator"] = cloud.live_initiator(host.name)
            if row["initiator"]:
                host_of.setdefault(row["initiator"], host.name)
        row["cache"] = cache_status(cloud, host.name)
        host_sessions[host.name] = {s.get("iqn") for s in row["sessions"]}
        data["hosts"].append(row)
        data["writeback"] += [s for s in cache_rows(host.name, row["cache"])[1]
                              if protocol.has_writeback(s.get("mode") or "")]
    add_checkpoint_ages(cloud, data["writeback"], data["problems"])
    for storage, bases in sorted(exported_by.items()):
        try:
            targets = cloud.node(storage).call("exports").get("targets", [])
        except DriverError as err:
            data["problems"].append(str(err))
            continue
        for target in targets:
            iqn = target.get("iqn") or ""
            if not any(iqn.startswith(b + ":") for b in bases):
                continue
            data["exports"].append({
                "storage": storage, "iqn": iqn, "backstore": target.get("backstore"),
                "initiators": [{"iqn": i, "host": host_of.get(i)}
                               for i in target.get("initiators") or []],
                "sessions": sorted(h for h, iqns in host_sessions.items() if iqn in iqns)})
    return data


def cache_rows(host, answer):
    """(read cache rows, stack rows) of one host's cache-status answer."""
    reads, stacks = [], []
    for cache in answer.get("read_caches") or []:
        key = str(cache.get("key") or cache.get("id") or "")
        hits, misses = cache.get("read_hits"), cache.get("read_misses")
        regions = cache.get("regions") or 0
        reads.append({
            "host": host, "image": protocol.image_id_of_base_key(key), "key": key,
            "size_bytes": cache.get("size_bytes"), "active": cache.get("active"),
            "refs": cache.get("refs"), "regions": regions,
            "hydrated_regions": cache.get("hydrated_regions"),
            "hydrated_percent": round(100.0 * (cache.get("hydrated_regions") or 0) / regions, 1)
            if regions else None,
            "read_hits": hits, "read_misses": misses, "hit_percent": _ratio(hits, misses),
            # Since the read cache was made (dm-stats restarts at each warm-up).
            "read_hits_total": cache.get("read_hits_total"),
            "read_misses_total": cache.get("read_misses_total"),
            "hit_percent_total": _ratio(cache.get("read_hits_total"),
                                        cache.get("read_misses_total"))})
    for stack in answer.get("stacks") or []:
        stacks.append({
            "host": host, "name": stack.get("name"), "mode": stack.get("mode"),
            "phase": stack.get("phase"), "degraded": stack.get("degraded"),
            "image_key": stack.get("base_key"), "dirty_blocks": stack.get("dirty_blocks"),
            "dirty_mib": round(stack["dirty_bytes"] / (1 << 20), 1)
            if stack.get("dirty_bytes") is not None else None,
            "read_hits": stack.get("read_hits"), "read_misses": stack.get("read_misses"),
            "write_hits": stack.get("write_hits"), "write_misses": stack.get("write_misses"),
            "read_hit_percent": _ratio(stack.get("read_hits"), stack.get("read_misses"))})
    return reads, stacks


def add_checkpoint_ages(cloud, stacks, problems, now=None):
    """Each write-back stack row gets the age of its disk's last checkpoint for its host
    (`checkpoint_age_s`, None: it has none): the most a loss of the host would take with it."""
    from . import checkpoint
    wb_rows = [s for s in stacks if protocol.has_writeback(s.get("mode") or "")]
    if not wb_rows:
        return
    now = time.time() if now is None else now
    known = {}
    for group in cloud.storage_groups():
        try:
            found = checkpoint.checkpoints(cloud, {(group.host, group.vg)})
        except DriverError as err:
            problems.append(str(err))
            continue
        known.update({lv: value for (_, _, lv), value in found.items()})
    for row in wb_rows:
        host, cut_at = known.get(row["name"], (None, None))
        row["checkpoint_age_s"] = round(now - cut_at) if host == row["host"] and cut_at \
            else None


def _ratio(hits, misses):
    if hits is None or misses is None or hits + misses == 0:
        return None
    return round(100.0 * hits / (hits + misses), 1)


def cache_stats(cloud, host_names=None):
    data = {"hosts": [], "read_caches": [], "stacks": [], "problems": []}
    for host in cloud.hosts():
        if host_names and host.name not in host_names:
            continue
        answer = cache_status(cloud, host.name)
        state = "no cache layer" if answer.get("installed") is False else \
            f"error: {answer['error']}" if "error" in answer else \
            ("cache VG missing" if answer.get("present") is False else "ok")
        data["hosts"].append({"host": host.name, "state": state, "vg": answer.get("vg"),
                              "size_bytes": answer.get("size_bytes"),
                              "free_bytes": answer.get("free_bytes")})
        if "error" in answer:
            data["problems"].append(answer["error"])
        reads, stacks = cache_rows(host.name, answer)
        data["read_caches"] += reads
        data["stacks"] += stacks
    add_checkpoint_ages(cloud, data["stacks"], data["problems"])
    return data
