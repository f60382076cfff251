"""dm devices a killed helper left suspended. A helper killed between `dmsetup suspend` and
`resume` (a table reload, a flush's switch to writethrough) leaves the device suspended: the VM's
I/O waits on it, and so does every LVM command that scans it. Before a host transaction or stack
command touches anything, such devices are resumed; only those whose owner's lock is free (its
holder is dead), so a live action's own suspend is never cut short."""
from tm_iscsi.node import locks
from tm_iscsi.node import run as _run
from tm_iscsi.node.errors import NodeError

from . import dmsetup, readcache, stack, writeback


def _owner_lock(name):
    """The lock whose holder suspends `name`, or None when the device is not tm_iscsi's."""
    for prefix in (stack.TOP_PREFIX, writeback.DM_PREFIX):
        if name.startswith(prefix):
            return "stack", name[len(prefix):]
    if name.startswith(readcache.DM_PREFIX) and not name.startswith(readcache.DM_PREFIX + "-"):
        return "readcache", name[len(readcache.DM_PREFIX):]
    return None


def suspended():
    """Names of tm_iscsi's suspended dm devices (one dmsetup call for all of them)."""
    result = _run.run(["dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o",
                       "name,attr"], timeout=dmsetup.QUERY_TIMEOUT, check=False)
    names = []
    for line in result.stdout.splitlines() if result.returncode == 0 else ():
        parts = line.strip().split("|")
        # attr: live table, inactive table, suspended, read-only (`L-sw` is suspended).
        if len(parts) == 2 and parts[1][2:3] == "s" and _owner_lock(parts[0]):
            names.append(parts[0])
    return names


def resume_orphans():
    resumed = []
    for name in suspended():
        kind, owner = _owner_lock(name)
        try:
            with locks.lock(kind, owner, timeout=0):
                info = dmsetup.info(name)
                if info is not None and info.suspended:
                    _run.info(f"resuming {name}, left suspended by an interrupted action")
                    dmsetup.resume(name)
                    resumed.append(name)
        except NodeError:
            continue   # a live action holds it: its suspend is its own
    return resumed
