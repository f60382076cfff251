"""Front-end settings: how to reach the nodes and the limits every action applies.

Read from the environment first, then `/etc/one/tm_iscsi.conf` (KEY=VALUE lines, # comments), then
defaults. oned exports /etc/one/tmrc to every driver, so either place works on a real front-end;
the tests and the lab set the environment."""
import os
import shlex
import socket
from dataclasses import dataclass, field
from typing import FrozenSet, Tuple

from . import kvfile

CONFIG_FILE = os.environ.get("TM_ISCSI_CONF", "/etc/one/tm_iscsi.conf")


@dataclass(frozen=True)
class Settings:
    ssh_argv: Tuple[str, ...]
    node_argv: Tuple[str, ...]
    frontend_names: FrozenSet[str]
    ssh_timeout: int = 60
    attach_timeout: int = 60
    copy_timeout: int = 7200
    # A node transaction of an action (every disk, three LUNs each): waits for the node's locks
    # behind up to 15 concurrent actions (oned's one_tm), so longer than one plain call.
    transaction_timeout: int = 600
    max_pool_fill: int = 90
    extra: dict = field(default_factory=dict)

    def is_frontend(self, host):
        return host in self.frontend_names


def load(environ=None):
    env = kvfile.read(CONFIG_FILE)
    env.update({k: v for k, v in (environ or os.environ).items() if k.startswith("TM_ISCSI_")})

    def get(key, default):
        return env.get(f"TM_ISCSI_{key}", default)

    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    ssh += shlex.split(get("SSH_OPTS", ""))
    frontend = set(filter(None, get("FRONTEND", "").split(",")))
    if not frontend:
        frontend = {socket.gethostname(), socket.getfqdn(), "localhost"}
    return Settings(
        ssh_argv=tuple(ssh),
        # What the front-end runs on a node. Installed nodes: the helper through sudo, allowed to
        # oneadmin by the sudoers file install.sh writes.
        node_argv=tuple(shlex.split(get("NODE_CMD", "sudo -n tm-iscsi-node"))),
        frontend_names=frozenset(frontend),
        ssh_timeout=int(get("SSH_TIMEOUT", 60)),
        attach_timeout=int(get("ATTACH_TIMEOUT", 60)),
        copy_timeout=int(get("COPY_TIMEOUT", 7200)),
        transaction_timeout=int(get("TRANSACTION_TIMEOUT", 600)),
        max_pool_fill=int(get("MAX_POOL_FILL", 90)),
    )


DEFAULT_REMOTES = "/var/lib/one/remotes"


def remotes_dir():
    """oned's remotes tree: the one the running action script is in (it exports it), else the
    stock location."""
    return os.environ.get("TM_ISCSI_REMOTES_DIR") or DEFAULT_REMOTES
