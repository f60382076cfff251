"""Which cache layers a VM disk gets on its host.

CACHE_MODE is a datastore attribute (none, read, writeback, read+writeback), overridable per VM
disk (DISK = [ ..., CACHE_MODE = "..." ]). The read cache is of an image shared by many VMs, so
only clones of an image get it; persistent and volatile disks can only get the write-back layer."""
from .errors import DriverError

MODES = ("none", "read", "writeback", "read+writeback")


def requested(disk, ds_config):
    value = (disk.attr("CACHE_MODE") or ds_config.cache_mode or "none").strip().lower()
    if value not in MODES:
        raise DriverError(f"CACHE_MODE {value!r} is not one of {', '.join(MODES)}")
    return value


def effective(mode, volume_kind):
    """The layers a volume of `volume_kind` can have in `mode`."""
    if volume_kind == "clone":
        return mode
    if volume_kind in ("volatile", "image"):
        return "writeback" if "writeback" in mode else "none"
    return "none"


def has_read(mode):
    return mode in ("read", "read+writeback")


def has_writeback(mode):
    return mode in ("writeback", "read+writeback")
