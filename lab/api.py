"""The lab as a Python object: what `lab/lab` does, and what the tests' session fixture uses."""
import contextlib
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import config, hostdeps, image, netns, nodes, ship, ssh

RESET_SCRIPT = f"{config.GUEST_SRC_DIR}/lab/guest/reset"


def log(msg):
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def up(fresh=True):
    """Bring the whole lab up from nothing. Returns timings in seconds."""
    timings = {}
    start = time.monotonic()
    hostdeps.ensure()
    root = image.ensure_image()
    timings["image"] = time.monotonic() - start
    if any(nodes.pid_of(n) for n in config.NODES):
        raise SystemExit("lab: already up; run `lab/lab down` first (or `lab/lab reset`)")
    if fresh and config.RUN_DIR.exists():
        shutil.rmtree(config.RUN_DIR / "nodes", ignore_errors=True)
    config.RUN_DIR.mkdir(parents=True, exist_ok=True)
    ssh.ensure_keys()
    ship.render_node_files()
    netns.create()
    boot_start = time.monotonic()
    for node in config.NODES:
        nodes.boot(node, root)
    nodes.wait_ready(config.NODES)
    _wait_ssh(config.NODES)
    timings["boot"] = time.monotonic() - boot_start
    timings["total"] = time.monotonic() - start
    return timings


def _wait_ssh(node_list, timeout=60):
    deadline = time.monotonic() + timeout
    for node in node_list:
        while True:
            result = ssh.run(node.name, ["true"], timeout=20)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"lab: ssh to {node.name} failed: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
            time.sleep(0.3)


def down():
    ssh.close_masters()
    for node in config.NODES:
        nodes.kill(node)
    netns.destroy()
    shutil.rmtree(config.RUN_DIR, ignore_errors=True)
    left = leftovers()
    if left:
        raise SystemExit("lab: down left behind: " + "; ".join(left))


def leftovers():
    found = [f"process {pid}" for pid in nodes.lab_processes()]
    found += netns.leftovers()
    return found


def status():
    rows = []
    for node in config.NODES:
        pid = nodes.pid_of(node)
        ready = (node.run_dir / "ready").exists()
        rows.append({
            "name": node.name, "role": node.role, "ip": node.ip,
            "state": "up" if pid and ready else ("booting" if pid else "down"),
            "pid": pid, "rss_mib": round(nodes.memory_kb(node) / 1024, 1),
        })
    return rows


def exec_(node_name, argv, input=None, timeout=600, user="root"):
    config.node(node_name)
    return ssh.run(node_name, argv, input=input, timeout=timeout, user=user)


def reset():
    """Wipe VGs, LIO config, sessions and dm devices on every node, without rebooting. Hosts go
    first (in parallel): they hold the sessions into the storage node's targets."""
    hosts = [n for n in config.NODES if n.role == "host"]
    storage = [n for n in config.NODES if n.role == "storage"]
    failures = []
    for group in (hosts, storage):
        with ThreadPoolExecutor(len(group)) as pool:
            results = pool.map(
                lambda n: (n, ssh.run(n.name, ["bash", RESET_SCRIPT, n.role], timeout=180)), group)
            for node, result in results:
                if result.returncode != 0:
                    failures.append(f"{node.name}: {result.stderr.decode(errors='replace').strip()}")
    if failures:
        raise SystemExit("lab: reset failed: " + " | ".join(failures))


def crash(node_name):
    node = config.node(node_name)
    ssh.close_master(node)
    if not nodes.kill(node):
        raise SystemExit(f"lab: {node_name} is not running")


def boot(node_name, timeout=180):
    node = config.node(node_name)
    nodes.boot(node, image.ensure_image())
    nodes.wait_ready([node], timeout=timeout)
    ssh.close_master(node)
    _wait_ssh([node])


def reboot(node_name):
    crash(node_name)
    boot(node_name)


@contextlib.contextmanager
def booted(reuse=False):
    """The lab up and reset for a benchmark: with `reuse` a running lab is kept (and left up),
    otherwise one is booted (after taking a half-up one down) and taken down at the end."""
    if not (reuse and all(row["state"] == "up" for row in status())):
        if any(row["state"] != "down" for row in status()):
            down()
        up()
    try:
        reset()
        yield
    finally:
        if not reuse:
            down()
