"""Booting, crashing and watching the user-mode-linux processes that are the lab's nodes.

A node's state lives in its run folder: `root.cow` (its copy-on-write layer over the shared root
image), `data.img` (its data disk), `pid`, `console.log`, and `ready` (written by the node's init
when it is up, holding its boot id)."""
import os
import signal
import subprocess
import time
from pathlib import Path

from . import config, netns, xstate

UML = "/usr/bin/linux.uml"


def pid_of(node):
    """The pid of the node's running UML process, or None. Never trusts a stale pid file: the
    process must still be a linux.uml started for this node."""
    try:
        pid = int((node.run_dir / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    # Until `ip netns exec` has exec()ed, the process is still `ip` with linux.uml in its argv.
    if not any(arg.endswith(b"linux.uml") for arg in cmdline):
        return None
    if f"lab.name={node.name}".encode() not in cmdline:
        return None
    return pid


def boot(node, root_image):
    """Start the node (keeping its disks if it had them: a reboot after a crash)."""
    if pid_of(node):
        return
    node.run_dir.mkdir(parents=True, exist_ok=True)
    data = node.run_dir / "data.img"
    if not data.exists():
        with open(data, "wb") as f:
            f.truncate(node.data_disk_gb << 30)
    (node.run_dir / "ready").unlink(missing_ok=True)
    netns.ensure_tap(node)
    cow = node.run_dir / "root.cow"
    argv = [
        "ip", "netns", "exec", config.NETNS, UML,
        f"mem={node.mem_mb}M",
        f"ubd0={cow},{root_image}",
        f"ubd1={data}",
        f"vec0:transport=tap,ifname={node.tap},gro=1,mac={_mac(node)}",
        "root=/dev/ubda", "rw", "init=/sbin/lab-init",
        "con=null", "con0=null,fd:1", "ssl=none",
        f"lab.name={node.name}",
        f"lab.role={node.role}",
        f"lab.ip={node.ip}/{config.PREFIX_LEN}",
        f"lab.src={config.SOURCE_DIR}",
        f"lab.run={config.RUN_DIR}",
    ]
    env = dict(os.environ)
    # UML backs the guest's memory with an unlinked file in TMPDIR; tmpfs keeps that off the disk.
    env["TMPDIR"] = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    shim = xstate.preload()
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
    with open(node.run_dir / "console.log", "ab") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    (node.run_dir / "pid").write_text(str(proc.pid))


def _mac(node):
    last = int(node.ip.rsplit(".", 1)[1])
    return f"52:54:00:77:00:{last:02x}"


def wait_ready(nodes, timeout=180):
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if (node.run_dir / "ready").exists():
                pending.remove(node)
            elif not _started_alive(node):
                raise SystemExit(f"lab: node {node.name} exited during boot; "
                                 f"see {node.run_dir / 'console.log'}")
        if pending and time.monotonic() > deadline:
            names = ", ".join(n.name for n in pending)
            raise SystemExit(f"lab: {names} not ready after {timeout}s; see console.log in "
                             f"{config.RUN_DIR / 'nodes'}")
        if pending:
            time.sleep(0.2)


def _started_alive(node):
    """The process boot() started still runs (whatever it is exec()ing into right now)."""
    try:
        pid = int((node.run_dir / "pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def kill(node, timeout=20):
    """Power the node off at once, as a crash does: nothing inside it gets to flush."""
    pid = pid_of(node)
    if pid is None:
        return False
    try:
        # UML runs its guest's processes as host processes of its own session.
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _session_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    (node.run_dir / "ready").unlink(missing_ok=True)
    return True


def _reap(pid):
    # A node booted by this process (a test session) is our child: its zombie stays until we
    # wait for it. One booted by an earlier `lab up` was reparented to init, which reaps it.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _session_alive(sid):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields after the comm: state ppid pgrp session ... Zombies count: `lab down` promises
        # no process left, and they are gone only once the machine's init has reaped them.
        if int(fields[3]) == sid:
            return True
    return False


def lab_processes():
    """Every process on the machine that belongs to a lab node (for `lab down` to prove it left
    nothing behind)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        args = cmdline.split(b"\0")
        if any(a.endswith(b"linux.uml") for a in args) and \
                f"lab.run={config.RUN_DIR}".encode() in args:
            found.append(int(entry))
    return found


def memory_kb(node):
    """Memory the node holds on the machine, in KiB: the guest RAM it has touched (a shared
    mapping of UML's memory file, counted once) plus each of its processes' private pages."""
    pid = pid_of(node)
    if pid is None:
        return 0
    anon = shmem = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) != pid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith("RssShmem:"):
                    shmem = max(shmem, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return anon + shmem
