"""monitor of the system datastore (a DS action run from the TM directory): the thin pool it
allocates volatile disks from, and what the hosts' caches are doing.

The cache figures go out as one `TM_ISCSI_CACHE=[...]` vector per host (template syntax, so oned
keeps them with the datastore's monitoring): read caches and how their reads split between local
disk (hits) and the storage node (misses), write-back stacks and their dirty blocks, and the free
space of the host's cache VG."""
from concurrent.futures import ThreadPoolExecutor

from .. import log
from ..errors import DriverError
from . import storage

# Hosts oned cannot use are not asked: ERROR, DISABLED, OFFLINE.
_SKIPPED_HOST_STATES = {"3", "4", "8"}
_HOST_TIMEOUT_S = 30


def monitor_lines(ctx, ds):
    status = storage.pool_status(ctx, ds)
    mib = 1 << 20
    total = status["data_total_bytes"] // mib
    used = status["data_used_bytes"] // mib
    return [f"USED_MB={used}", f"TOTAL_MB={total}", f"FREE_MB={max(total - used, 0)}"]


def cache_hosts(ctx, cluster_ids):
    """Names of the usable hosts in the datastore's clusters (every cluster when none given)."""
    names = []
    for host in ctx.one.host_pool():
        if host.findtext("STATE") in _SKIPPED_HOST_STATES:
            continue
        if cluster_ids and host.findtext("CLUSTER_ID") not in cluster_ids:
            continue
        names.append(host.findtext("NAME"))
    return sorted(n for n in names if n)


def cache_lines(ctx, hosts):
    """One TM_ISCSI_CACHE vector per host; a host that does not answer says so and holds up no
    other (asked in parallel, each with a short timeout)."""
    def ask(host):
        try:
            return host, ctx.node(host).call("cache-status", timeout=_HOST_TIMEOUT_S)
        except DriverError as err:
            log.info(f"cache figures of {host}: {err}")
            return host, None

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(hosts)))) as pool:
        answers = list(pool.map(ask, hosts))
    return [cache_vector(host, status) for host, status in answers]


def cache_summary(status):
    """The figures of one host's `cache-status` answer, as integers."""
    def total(rows, key):
        return sum(int(r.get(key) or 0) for r in rows)

    read_caches = status.get("read_caches") or []
    stacks = status.get("stacks") or []
    wb = [s for s in stacks if "writeback" in (s.get("mode") or "")]
    return {
        "READ_CACHES": len(read_caches),
        "READ_CACHE_MB": total(read_caches, "size_bytes") >> 20,
        "READ_HITS": total(read_caches, "read_hits"),
        "READ_MISSES": total(read_caches, "read_misses"),
        "READ_HITS_TOTAL": total(read_caches, "read_hits_total"),
        "READ_MISSES_TOTAL": total(read_caches, "read_misses_total"),
        "STACKS": len(stacks),
        "WRITEBACK_STACKS": len(wb),
        "DIRTY_BLOCKS": total(wb, "dirty_blocks"),
        "WB_READ_HITS": total(wb, "read_hits"),
        "WB_READ_MISSES": total(wb, "read_misses"),
        "WB_WRITE_HITS": total(wb, "write_hits"),
        "WB_WRITE_MISSES": total(wb, "write_misses"),
        "CACHE_FREE_MB": int(status.get("free_bytes") or 0) >> 20,
        "CACHE_TOTAL_MB": int(status.get("size_bytes") or 0) >> 20,
    }


def cache_vector(host, status):
    fields = [("HOST", host)]
    if status is None:
        fields.append(("STATE", "unreachable"))
    elif not status.get("present"):
        fields.append(("STATE", "no-cache-vg"))
    else:
        fields.append(("STATE", "ok"))
        fields += sorted(cache_summary(status).items())
    body = ",".join(f'{key}="{value}"' for key, value in fields)
    return f"TM_ISCSI_CACHE=[{body}]"
