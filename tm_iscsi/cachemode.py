"""Which cache layers a VM disk gets on its host: CACHE_MODE, a datastore attribute (none, read,
writeback, read+writeback) a VM disk may override (DISK = [ ..., CACHE_MODE = "..." ]). The
vocabulary and its rules are tm_iscsi.protocol's (the node helper shares them)."""
from .errors import DriverError
from .protocol import MODES, effective, has_read, has_writeback  # noqa: F401 - re-exported


def requested(disk, ds_config):
    value = (disk.attr("CACHE_MODE") or ds_config.cache_mode or "none").strip().lower()
    if value not in MODES:
        raise DriverError(f"CACHE_MODE {value!r} is not one of {', '.join(MODES)}")
    return value
