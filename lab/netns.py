"""The lab's network: a namespace holding a bridge, one tap per node and one veth end whose peer
stays on the machine (the front-end's way in). Nothing in the namespace routes out."""
import subprocess

from . import config


def _ip(*args, netns=False, check=True):
    argv = ["ip"] + (["-n", config.NETNS] if netns else []) + list(args)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def exists() -> bool:
    return config.NETNS in _ip("netns", "list").stdout.split()


def create():
    if not exists():
        _ip("netns", "add", config.NETNS)
    _ip("link", "set", "lo", "up", netns=True)
    if _ip("link", "show", config.BRIDGE, netns=True, check=False).returncode != 0:
        _ip("link", "add", config.BRIDGE, "type", "bridge", netns=True)
    _ip("link", "set", config.BRIDGE, "up", netns=True)
    for node in config.NODES:
        ensure_tap(node)
    if _ip("link", "show", config.UPLINK_HOST_SIDE, check=False).returncode != 0:
        _ip("link", "add", config.UPLINK_HOST_SIDE, "type", "veth",
            "peer", "name", config.UPLINK_NS_SIDE, "netns", config.NETNS)
    _ip("link", "set", config.UPLINK_NS_SIDE, "master", config.BRIDGE, "up", netns=True)
    addr = f"{config.FRONTEND_IP}/{config.PREFIX_LEN}"
    if addr not in _ip("-br", "addr", "show", config.UPLINK_HOST_SIDE).stdout:
        _ip("addr", "add", addr, "dev", config.UPLINK_HOST_SIDE)
    _ip("link", "set", config.UPLINK_HOST_SIDE, "up")


def ensure_tap(node):
    if _ip("link", "show", node.tap, netns=True, check=False).returncode != 0:
        _ip("tuntap", "add", node.tap, "mode", "tap", netns=True)
    _ip("link", "set", node.tap, "master", config.BRIDGE, "up", netns=True)


def destroy():
    # Deleting the namespace takes its bridge, taps and the veth pair (both ends) with it.
    if exists():
        _ip("netns", "del", config.NETNS)
    _ip("link", "del", config.UPLINK_HOST_SIDE, check=False)


def leftovers():
    """What of the lab's network is still on the machine (empty when it is all gone)."""
    found = []
    if exists():
        found.append(f"netns {config.NETNS}")
    if _ip("link", "show", config.UPLINK_HOST_SIDE, check=False).returncode == 0:
        found.append(f"link {config.UPLINK_HOST_SIDE}")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            if line.split()[1] == f"/run/netns/{config.NETNS}":
                found.append(f"mount {line.split()[1]}")
    return found
