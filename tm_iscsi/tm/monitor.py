"""monitor of the system datastore (a DS action run from the TM directory): the thin pool it
allocates volatile disks from.

oned keeps only TOTAL_MB, FREE_MB and USED_MB of a datastore monitor (Datastore::update_monitor
in 7.4), so that is all it prints. What the hosts' caches hold reaches oned through the host
probe instead (tm_iscsi.hostfacts), into each host's template, where the scheduler reads it."""
from . import storage


def monitor_lines(ctx, ds):
    status = storage.pool_status(ctx, ds)
    mib = 1 << 20
    total = status["data_total_bytes"] // mib
    used = status["data_used_bytes"] // mib
    return [f"USED_MB={used}", f"TOTAL_MB={total}", f"FREE_MB={max(total - used, 0)}"]
