"""The lab's fixed shape: node names, roles, addresses, sizes and where its files live.

Names match the captured oned fixtures (ISCSI_HOST=storage, hosts host1 and host2), so datastore
attributes in tests read exactly as on a real cloud.
"""
import os
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent
# Several labs can run side by side on one machine (one per developer working in parallel):
# TM_ISCSI_LAB_ID=N gives lab N its own namespace, subnet and run folder. Lab 0 is the default.
LAB_ID = int(os.environ.get("TM_ISCSI_LAB_ID", "0"))
_SUFFIX = "" if LAB_ID == 0 else str(LAB_ID)
RUN_DIR = Path(os.environ.get("TM_ISCSI_LAB_RUN", SOURCE_DIR / "lab" / f"run{_SUFFIX}"))
# The root image outlives a checkout: rebuilding it costs a minute, so it is keyed and kept.
CACHE_DIR = Path(os.environ.get("TM_ISCSI_LAB_CACHE", "/var/tmp/tm_iscsi-lab"))

NETNS = f"tm-iscsi-lab{_SUFFIX}"
BRIDGE = "labbr0"
SUBNET_PREFIX = f"10.213.{77 + LAB_ID}"
PREFIX_LEN = 24
# The machine's end of a veth into the lab bridge: the front-end role (tests, demo, benchmarks)
# reaches the nodes from here, and nothing in the namespace routes anywhere else.
UPLINK_HOST_SIDE = f"tmiscsi-lab{LAB_ID}"
UPLINK_NS_SIDE = "uplink0"
FRONTEND_IP = f"{SUBNET_PREFIX}.1"

GUEST_SRC_DIR = "/opt/tm_iscsi"
GUEST_VENV = "/opt/tm_iscsi-venv"
IQN_PREFIX = "iqn.2026-11.lab.tm-iscsi"


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # "storage" or "host"
    ip: str
    mem_mb: int
    data_disk_gb: int  # storage: PV of the image VG; host: local cache disk

    @property
    def tap(self) -> str:
        return f"tap-{self.name}"

    @property
    def initiator_iqn(self) -> str:
        return f"{IQN_PREFIX}:{self.name}"

    @property
    def run_dir(self) -> Path:
        return RUN_DIR / "nodes" / self.name


NODES = (
    Node("storage", "storage", f"{SUBNET_PREFIX}.10", 768, 24),
    Node("host1", "host", f"{SUBNET_PREFIX}.11", 640, 6),
    Node("host2", "host", f"{SUBNET_PREFIX}.12", 640, 6),
)
NODES_BY_NAME = {n.name: n for n in NODES}


def node(name: str) -> Node:
    try:
        return NODES_BY_NAME[name]
    except KeyError:
        raise SystemExit(f"lab: unknown node {name!r}; nodes are {', '.join(NODES_BY_NAME)}")


SSH_KEY = RUN_DIR / "ssh" / "id_ed25519"
SSH_CONFIG = RUN_DIR / "ssh_config"
