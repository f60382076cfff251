"""SSH access to the nodes: a key pair and an ssh_config the lab generates, so that `ssh -F
lab/run/ssh_config storage` works exactly as `ssh storage` does on a real cloud."""
import shlex
import subprocess

from . import config


def ensure_keys():
    key = config.SSH_KEY
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tm_iscsi-lab",
                        "-f", str(key)], check=True)
    lines = []
    for node in config.NODES:
        lines += [
            f"Host {node.name}",
            f"  HostName {node.ip}",
            # As a real front-end: oneadmin, root through sudo only. The lab's own tools say
            # root@<node> (ssh_argv).
            "  User oneadmin",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  LogLevel ERROR",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 5",
            "  ServerAliveCountMax 3",
            # One TCP+auth handshake per node per run: each costs ~0.3 s of UML time otherwise.
            "  ControlMaster auto",
            f"  ControlPath {config.RUN_DIR}/ssh-%r@%h.sock",
            "  ControlPersist 600",
            "",
        ]
    config.SSH_CONFIG.write_text("\n".join(lines))
    hosts = ["127.0.0.1 localhost", f"{config.FRONTEND_IP} frontend"]
    hosts += [f"{n.ip} {n.name}" for n in config.NODES]
    (config.RUN_DIR / "hosts").write_text("\n".join(hosts) + "\n")


def ssh_argv(node_name, command_argv=None, tty=False, user="root"):
    argv = ["ssh", "-F", str(config.SSH_CONFIG)]
    if tty:
        argv.append("-t")
    argv.append(f"{user}@{node_name}")
    if command_argv:
        # ssh joins its arguments into one remote shell line, so each word is quoted on its own.
        argv += ["--", " ".join(shlex.quote(a) for a in command_argv)]
    return argv


def run(node_name, command_argv, input=None, timeout=300, check=False, user="root"):
    return subprocess.run(ssh_argv(node_name, command_argv, user=user), input=input,
                          capture_output=True, timeout=timeout, check=check)


def close_master(node):
    """End the shared connection to a node: after a crash it would hang every new session."""
    for user in ("root", "oneadmin"):
        sock = config.RUN_DIR / f"ssh-{user}@{node.ip}.sock"
        if sock.exists():
            subprocess.run(["ssh", "-F", str(config.SSH_CONFIG), "-O", "exit",
                            f"{user}@{node.name}"], capture_output=True, timeout=10)
            sock.unlink(missing_ok=True)


def close_masters():
    for node in config.NODES:
        close_master(node)
