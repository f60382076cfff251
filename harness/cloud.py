"""A small OpenNebula cloud around the lab, as oned would drive it: the oned stand-in serving the
captured VM / datastore / image XML, one_tm and one_datastore stand-ins running the real
remotes/ scripts on this machine (the front-end), and the nodes reached over the lab's SSH."""
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import xml.etree.ElementTree as ET
from pathlib import Path

from lab import config as lab_config
from harness import fixtures
from harness.oned import OnedStandIn
from harness.transfer import DatastoreManager, TransferManager

REPO = Path(__file__).resolve().parents[1]
REMOTES = REPO / "remotes"
IMAGE_VG = "vg-one-100"
SYSDIR = "/var/lib/one/datastores/101"
LOCAL_VG_DM_PREFIX = "tmi--cache-"  # device-mapper doubles the dash of the VG name


def converge_modes(*in_ci):
    """The cache modes a convergence test runs in: those it names in CI, more when
    bench/soak_converge.py asks (TM_ISCSI_CONVERGE_MODES: `all` or a comma-separated list)."""
    chosen = os.environ.get("TM_ISCSI_CONVERGE_MODES", "")
    if not chosen:
        return list(in_ci)
    from tm_iscsi.protocol import MODES
    return [mode for mode in MODES if chosen == "all" or mode in chosen.split(",")]


def under_soak():
    """Whether bench/soak_converge.py runs the tests (it always names the modes): for what is
    converged there only."""
    return bool(os.environ.get("TM_ISCSI_CONVERGE_MODES"))


def driver_env(oned_env):
    env = dict(oned_env)
    env.update({
        "PYTHONPATH": str(REPO),
        "TM_ISCSI_PYTHON": sys.executable,
        "TM_ISCSI_SSH_OPTS": f"-F {lab_config.SSH_CONFIG}",
        # TM_ISCSI_NODE_CMD is the default, `sudo -n tm-iscsi-node`: the front-end logs in as
        # oneadmin (the lab's ssh_config) and reaches root through the sudoers rule only.
        "TM_ISCSI_FRONTEND": "frontend",
        "TM_ISCSI_CONF": "/nonexistent",
    })
    return env


class Cloud:
    @classmethod
    @contextlib.contextmanager
    def ready(cls, lab, workdir):
        """A cloud on a fresh oned stand-in, the image VG and pool made, every host's cache VG
        made and the captured datastores loaded: where every driver test starts."""
        with OnedStandIn() as oned:
            cloud = cls(lab, oned, workdir)
            cloud.prepare_storage()
            cloud.load_datastores()
            yield cloud

    def __init__(self, lab, oned, workdir):
        self.lab = lab
        self.oned = oned
        self.workdir = Path(workdir)
        self.env = driver_env(oned.env(str(self.workdir)))
        self.tm = TransferManager(REMOTES, drivers=["iscsi_lvm"], env=self.env, timeout=600)
        self.ds = DatastoreManager(REMOTES, ds_drivers=["iscsi_lvm"], system_tms=["iscsi_lvm"],
                                   env=self.env, timeout=900)
        self.mode = "none"
        # Kill trials per converge() (0 in CI), their moments seeded per test (workdir's name).
        self.converge_kills = int(os.environ.get("TM_ISCSI_CONVERGE_KILLS", "0"))
        self._kill_rng = random.Random(
            f"{os.environ.get('TM_ISCSI_KILL_SEED', 'kill')}-{self.workdir.name}")
        # (action, whether the kill cut it) of each kill trial of this cloud's converge() calls.
        self.kills = []

    # -- setup ---------------------------------------------------------------------------------

    def prepare_storage(self):
        self.lab.sh("storage", f"pvcreate -q /dev/ubdb && vgcreate -q {IMAGE_VG} /dev/ubdb")
        self.lab.node_helper("storage", "pool-ensure", "--vg", IMAGE_VG)
        for host in ("host1", "host2"):
            self.lab.node_helper(host, "cache-init", "--device", "/dev/ubdb")

    def set_cache_mode(self, mode):
        self.mode = mode
        self.set_template_attr("datastore", 100, "CACHE_MODE", mode)
        self.set_template_attr("datastore", 101, "CACHE_MODE", mode)

    def load_datastores(self):
        root = fixtures.folder("00-datastores")
        self.oned.put_file(root / "ds-100.after-monitor.xml")
        self.oned.put_file(root / "ds-101.after-monitor.xml")
        # The system datastore allocates volatile disks from the image datastore's pool.
        self.set_template_attr("datastore", 101, "VG_NAME", IMAGE_VG)

    def set_template_attr(self, kind, object_id, name, value):
        def change(root):
            template = root.find("TEMPLATE")
            node = template.find(name)
            if node is None:
                node = ET.SubElement(template, name)
            node.text = str(value)
        self.oned.edit_with(kind, object_id, change)

    def load_vm(self, folder, capture):
        """Serve the VM XML captured with call `capture` (e.g. "01-tm-clone") of `folder`."""
        return self.oned.put_file(fixtures.folder(folder) / f"{capture}.vm.xml")

    # -- driving -------------------------------------------------------------------------------

    def transfer(self, text):
        result = self.tm.run_transfer_text(text)
        assert result.success, f"transfer failed: {result.info}\n" + "\n".join(
            r.stderr for r in result.results)
        return result

    def transfer_file(self, folder, name):
        return self.transfer((fixtures.folder(folder) / "transfer" / name).read_text())

    def tm_action(self, line, stdin=None, fault=None, remotes=None, env=None):
        """One action as one_tm runs it; `remotes` and `env` for another remotes tree (a
        backup datastore's beside ours) and what its driver reads."""
        if fault is None and remotes is None and env is None:
            return self.tm.run_action(line, stdin=stdin)
        env = dict(self.env, **(env or {}))
        if fault is not None:
            env["TM_ISCSI_FAULT"] = fault
        manager = TransferManager(remotes or REMOTES, drivers=["iscsi_lvm"], env=env,
                                  timeout=600)
        return manager.run_action(line, stdin=stdin)

    def converge(self, line, stdin=None, max_steps=40, remotes=None, env=None):
        """Fail the action before its first node call, then after each node call in turn (the
        call did its work, the action died), re-running it each time from the state the failure
        left; then run it clean. Returns the number of node calls of the action. Every failure
        must be one plain line.

        On the nodes, a failure before call N leaves what a failure after call N-1 leaves (they
        differ only by the front-end's own work in between, which every re-run redoes), so only
        the first `before` is run: each re-run replays the whole action, and a call in the lab
        takes about a second.

        With TM_ISCSI_CONVERGE_KILLS=K (the soak, bench/soak_converge.py), the first K failures
        are each followed by a run whose node helpers are killed -9 at a seeded random moment
        (inside a node call, between two, or after the last): the first from the state before
        the action, the others from what the failures and kills before them left."""
        return self._converge(line.split()[0],
                              lambda fault: self.tm_action(line, stdin=stdin, fault=fault,
                                                           remotes=remotes, env=env),
                              ("storage", "host1", "host2"), max_steps, window_key=line)[0]

    def converge_ds(self, action, object_id, xml, max_steps=20):
        """converge() for a DS action: failed before its first node call, then after each in
        turn, each re-run from what the failure left; then run clean. Returns (node calls,
        the clean run's result)."""
        return self._converge(f"ds-{action}",
                              lambda fault: self.ds_action(action, object_id, xml, fault=fault),
                              ("storage",), max_steps)

    # Per action (its whole line: MV stop and resume differ) and cache mode, the longest whole
    # run seen, in seconds: the window a kill's moment is drawn from.
    _seconds = {}

    def _converge(self, name, run, nodes, max_steps, window_key=None):
        window_key = (window_key or name, self.mode)
        faults = ["before:1"] + [f"after:{step}" for step in range(1, max_steps + 1)]
        for index, fault in enumerate(faults):
            started = time.monotonic()
            result = run(fault)
            if result.success:
                assert fault.startswith("after:"), f"{name}: fault {fault} was not hit"
                calls = int(fault.split(":")[1]) - 1
                assert calls > 0, f"{name}: no node call at all"
                self._ran_whole(window_key, started)
                started = time.monotonic()
                final = run(None)
                assert final.success, final.info
                self._ran_whole(window_key, started)
                return calls, final
            plain = plain_lines(result)
            assert len(plain) == 1 and "injected fault" in plain[0], result.stderr
            if index < self.converge_kills:
                window = self._seconds.get(window_key, self.FIRST_KILL_WINDOW_S)
                delay, killed = self._killed_during(lambda: run(None),
                                                    self._kill_rng.uniform(0.0, window), nodes)
                self.kills.append((name, not killed.success))
                self._log_kill(name, delay, window, killed)
        raise AssertionError(f"{name}: more than {max_steps} node calls")

    def _ran_whole(self, key, started):
        self._seconds[key] = max(self._seconds.get(key, 0.0), time.monotonic() - started)

    # The window of the first kill of an action not yet run clean: most take 3-15 s in the lab.
    FIRST_KILL_WINDOW_S = 10.0

    def _log_kill(self, name, delay, window, result):
        path = os.environ.get("TM_ISCSI_KILL_LOG")
        if path:
            with open(path, "a") as log:
                log.write(json.dumps({"test": self.workdir.name, "mode": self.mode,
                                      "action": name, "delay_s": round(delay, 2),
                                      "window_s": round(window, 2),
                                      "cut": not result.success}) + "\n")

    def killed_at_random(self, line, rng, max_delay, stdin=None,
                         nodes=("storage", "host1", "host2")):
        """Run the action and kill -9 every node helper process at a random moment of it (inside
        whichever transaction runs then, or between two). Returns (seconds the kill came at,
        the action's result)."""
        delay = rng.uniform(0.0, max_delay)
        delay, result = self._killed_during(lambda: self.tm_action(line, stdin), delay, nodes)
        self._log_kill(line.split()[0], delay, max_delay, result)
        return delay, result

    def _killed_during(self, run, delay, nodes):
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(run)
            time.sleep(delay)
            for node in nodes:
                # [e]: the pattern must not match this shell's own command line.
                self.lab.sh(node, "pkill -9 -f 'tm-iscsi-nod[e]|tm_iscsi[.]nod[e]' || true")
            result = running.result()
        if not result.success:
            plain = plain_lines(result)
            assert len(plain) == 1, result.stderr
        return delay, result

    def import_image(self, mib, seed):
        """Image 0 from a pattern file of `mib` MiB through the real DS cp; kept as self.raw."""
        self.raw = pattern_file(self.workdir / "img.raw", mib, seed)
        cp = self.ds_action("cp", 0, self.ds_xml("01-image-create-from-path", "02-ds-cp",
                                                 PATH=self.raw))
        assert cp.success, cp.info
        return self.raw

    def register_image(self, mib, seed, hosts=("host1", "host2")):
        """import_image, and image 0 and the hosts known to oned as the admin tools read them
        (the image's SIZE what was imported)."""
        from harness.documents import image_xml
        self.import_image(mib, seed)
        image = ET.fromstring(image_xml(0))
        image.find("SIZE").text = str(mib)
        self.oned.put_xml(ET.tostring(image, encoding="unicode"))
        for host in hosts:
            self.host_id(host)
        return self.raw

    def ds_action(self, action, object_id, xml, fault=None):
        manager = self.ds if fault is None else DatastoreManager(
            REMOTES, ds_drivers=["iscsi_lvm"], system_tms=["iscsi_lvm"],
            env=dict(self.env, TM_ISCSI_FAULT=fault), timeout=900)
        result = manager.run(action, object_id, xml)
        if action == "monitor" and result.success and object_id in self.oned.ids("datastore"):
            # What oned keeps of it; the stand-in refuses a figure oned would drop.
            self.oned.datastore_monitored(object_id, base64.b64decode(result.info).decode())
        return result

    def host_id(self, name):
        """The stand-in's id of host `name`, registered (MONITORED, with its initiator) if it
        has none yet."""
        from harness.documents import host_xml
        for host_id in self.oned.ids("host"):
            if ET.fromstring(self.oned.xml("host", host_id)).findtext("NAME") == name:
                return host_id
        host_id = max(self.oned.ids("host"), default=-1) + 1
        self.oned.put_document(host_xml(host_id, name,
                                        initiator=f"iqn.2026-11.lab.tm-iscsi:{name}"))
        return host_id

    def host_probe(self, host):
        """The host probe run on `host` as monitord runs it (as oneadmin, the helper through its
        sudo rule), its output kept as oned keeps a SYSTEM_HOST message; returns the lines."""
        from lab.session import NODE_PYTHON, NODE_SRC
        result = self.lab.api.exec_(host, ["su", "-s", "/bin/sh", "oneadmin", "-c",
                                           f"PYTHONPATH={NODE_SRC} {NODE_PYTHON} -m "
                                           "tm_iscsi.hostfacts --helper tm-iscsi-node"],
                                    timeout=120)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        text = result.stdout.decode()
        self.oned.host_system_info(self.host_id(host), text)
        return text.splitlines()

    def ds_xml(self, folder, capture, **image_fields):
        """The captured driver action, with IMAGE fields replaced (e.g. PATH)."""
        xml = (fixtures.folder(folder) / f"{capture}.stdin.xml").read_text()
        root = ET.fromstring(xml)
        for name, value in image_fields.items():
            root.find(f"IMAGE/{name}").text = str(value)
        path = str(image_fields.get("PATH", ""))
        if path.startswith("/"):
            # What an administrator does to import from a directory: oned's default
            # RESTRICTED_DIRS="/" refuses any path outside SAFE_DIRS (/var/tmp).
            safe = root.find("DATASTORE/TEMPLATE/SAFE_DIRS")
            if safe is None:
                safe = ET.SubElement(root.find("DATASTORE/TEMPLATE"), "SAFE_DIRS")
            safe.text = f"{safe.text or ''} {os.path.dirname(os.path.realpath(path))}".strip()
        return ET.tostring(root, encoding="unicode")

    # -- checking ------------------------------------------------------------------------------

    def sha_on(self, node, path, offset_mib=0, mib=1):
        return self.lab.sh(node, f"dd if={path} bs=1M skip={offset_mib} count={mib} "
                                 "iflag=direct status=none | sha256sum | cut -d' ' -f1").strip()

    def write_on(self, node, path, pattern, offset_mib=0):
        """Write 1 MiB of `pattern` (bytes) at offset; return its sha256."""
        data = (pattern * ((1 << 20) // len(pattern) + 1))[: 1 << 20]
        self.lab.sh(node, f"dd of={path} bs=1M seek={offset_mib} count=1 iflag=fullblock "
                          "oflag=direct conv=notrunc status=none", input=data)
        return hashlib.sha256(data).hexdigest()

    def link_target(self, node, path):
        return self.lab.sh(node, f"test -L {path} && readlink -f {path}").strip()

    def lvs(self):
        out = self.lab.sh("storage", f"lvs --noheadings -o lv_name {IMAGE_VG}")
        return sorted(n.strip() for n in out.split() if n.strip())

    def exports(self):
        return self.lab.node_helper("storage", "exports")["targets"]

    def sessions(self, host):
        return self.lab.node_helper(host, "sessions")["sessions"]

    def leftovers_on_hosts(self):
        """What a host still holds after every VM is gone: sessions, dm devices, links."""
        found = {}
        for host in ("host1", "host2"):
            items = [s["iqn"] for s in self.sessions(host)]
            # The local cache VG's own LVs stay: read caches outlive the VMs by design.
            dm = [name for name in self.lab.sh(
                host, "dmsetup ls | grep -v 'No devices' | cut -f1 || true").split()
                if not name.startswith(LOCAL_VG_DM_PREFIX)]
            links = self.lab.sh(host, f"find {SYSDIR} -type l 2>/dev/null || true").split()
            if items or dm or links:
                found[host] = {"sessions": items, "dm": dm, "links": links}
        return found


def plain_lines(result):
    """What an administrator reads of a failed action: stderr without oned's log lines."""
    return [l for l in result.stderr.splitlines()
            if l.strip() and not l.startswith(("INFO:", "ERROR:"))]


def b64(xml):
    return base64.b64encode(xml.encode()).decode()


def pattern_file(path, mib, seed):
    """A raw image whose every MiB differs (so offsets are checked too)."""
    with open(path, "wb") as out:
        for i in range(mib):
            block = hashlib.sha256(f"{seed}-{i}".encode()).digest()
            out.write(block * ((1 << 20) // len(block)))
    return path


def sha_of_file(path, offset_mib=0, mib=1):
    with open(path, "rb") as f:
        f.seek(offset_mib << 20)
        return hashlib.sha256(f.read(mib << 20)).hexdigest()


WORD = re.compile(r"\S+")
