"""The demo's script: what an OpenNebula cloud would do to tm_iscsi, on the lab, with every step
timed and every byte that matters checked.

oned itself does not run here: the oned stand-in of the tests serves the VM, image and datastore
documents a real oned 7.4.0 sent (shared/fixtures), and the driver's scripts in remotes/ are run
with the argv and stdin oned gives them. The nodes are installed by install.sh, the real
installer, with what an administrator ships to a node that reaches no package index."""
import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import api, config, ship
from lab.session import LabSession

REPO = config.SOURCE_DIR
sys.path.insert(0, str(REPO))

from harness.cloud import IMAGE_VG, Cloud, pattern_file, sha_of_file  # noqa: E402
from harness.oned import OnedStandIn, parse_probe_template  # noqa: E402
from harness.documents import host_xml, image_xml, vm_xml  # noqa: E402

SYS = "/var/lib/one//datastores/101"
SHIP_DIR = "demo-install"
MIB = 1 << 20
# A VM's writes while it migrates live: numbered 64 KiB records cycling over 256 slots from MiB 8.
WRITER = r"""
import os, sys, time
dev, stop, out = sys.argv[1:4]
fd = os.open(dev, os.O_WRONLY | os.O_DSYNC)
i = 0
while not os.path.exists(stop) and i < 100000:
    rec = ("live-%08d-" % i).encode()
    os.pwrite(fd, (rec * (65536 // len(rec) + 1))[:65536], (8 << 20) + (i % 256) * 65536)
    i += 1
    with open(out, "w") as f:
        f.write(str(i))
os.close(fd)
"""
CHECKER = r"""
import sys
dev, count = sys.argv[1], int(sys.argv[2])
bad = 0
with open(dev, "rb") as f:
    for slot in range(min(count, 256)):
        last = max(i for i in range(count) if i % 256 == slot)
        rec = ("live-%08d-" % last).encode()
        f.seek((8 << 20) + slot * 65536)
        if f.read(65536) != (rec * (65536 // len(rec) + 1))[:65536]:
            bad += 1
print(bad)
"""


class DemoFailed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise DemoFailed(what)


class Demo:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = Path(workdir)
        self.steps = []          # (what, seconds, node calls)
        self.reads = []          # (vm, host, MiB read over iSCSI, MiB read by the VM)
        self.notes = []
        self.trace = self.workdir / "trace.jsonl"
        os.environ["TM_ISCSI_TRACE"] = str(self.trace)

    # -- reporting -------------------------------------------------------------------------------

    def say(self, text):
        print(f"demo: {text}", flush=True)

    def step(self, what, func, *args, **kwargs):
        self.trace.write_text("")
        # Said when it starts: a deploy takes half a minute in the lab.
        self.say(f"{what} ...")
        started = time.monotonic()
        result = func(*args, **kwargs)
        seconds = time.monotonic() - started
        calls = len(self.trace.read_text().splitlines())
        self.steps.append((what, seconds, calls))
        self.say(f"  done in {seconds:.1f} s" + (f", {calls} node calls (ssh round trips)"
                                                 if calls else ""))
        return result

    # -- the lab and the install -----------------------------------------------------------------

    def boot(self):
        if any(row["state"] != "down" for row in api.status()):
            api.down()
        api.up()

    def install(self):
        options = ship.ship(SHIP_DIR)
        roles = {"storage": "storage", "host1": "host", "host2": "host"}

        def one(node):
            result = self.lab.sh(node, f"{ship.INSTALL} --role {roles[node]} --device /dev/ubdb "
                                       f"{options}", check=False, timeout=900)
            out = result.stdout.decode(errors="replace")
            if result.returncode != 0:
                raise DemoFailed(f"install.sh on {node} failed: "
                                 f"{result.stderr.decode(errors='replace').strip()[-300:]}")
            return node, out.strip().splitlines()[-1] if out.strip() else ""

        with ThreadPoolExecutor(3) as pool:
            for node, last in pool.map(one, roles):
                self.say(f"  {node}: {last}")

    # -- the cloud -------------------------------------------------------------------------------

    def tm(self, line, stdin=None):
        result = self.cloud.tm_action(line, stdin=stdin)
        if not result.success:
            raise DemoFailed(f"{line.split()[0]} failed: {result.info.strip()}")
        return result

    def deploy(self, vm_id, host, persistent=False, user_template=None):
        xml = vm_xml(vm_id, hosts=(host,), disks=(0, 1) if persistent else (0,))
        if user_template:
            xml = _with_user_template(xml, user_template, name=f"demo-vm-{vm_id}")
        self.oned.put_xml(xml)
        self.tm(f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-0 {host}:{SYS}/{vm_id}/disk.0 "
                f"{vm_id} 100")
        if persistent:
            self.tm(f"LN iscsi_lvm frontend:{IMAGE_VG}/img-1 {host}:{SYS}/{vm_id}/disk.1 "
                    f"{vm_id} 100")

    def iscsi_read_bytes(self, host):
        out = self.lab.sh(host, "cat /sys/block/sd*/stat 2>/dev/null || true")
        return sum(int(line.split()[2]) * 512 for line in out.splitlines() if line.split())

    def vm_reads_its_disk(self, vm_id, host):
        """The VM reads its whole disk (as a boot and a scan would): the bytes must be the
        image's, and the host's iSCSI counters tell how much came over the network."""
        before = self.iscsi_read_bytes(host)
        digest = self.lab.sh(host, f"dd if={SYS}/{vm_id}/disk.0 bs=1M count={self.args.image_mib}"
                                   " iflag=direct status=none | sha256sum | cut -d' ' -f1").strip()
        over_iscsi = self.iscsi_read_bytes(host) - before
        check(digest == self.image_sha, f"VM {vm_id} on {host} does not read the image's bytes")
        self.reads.append((vm_id, host, over_iscsi / MIB, self.args.image_mib))

    def live_migrate_under_load(self, vm_id, src, dst):
        """PREMIGRATE while the VM writes on the source, the writes stop at the switch (the
        hypervisor pauses the VM), POSTMIGRATE, and every record is on the destination."""
        disk = f"{SYS}/{vm_id}/disk.0"
        self.lab.sh(src, "cat > /root/demo-writer.py", input=WRITER.encode())
        self.lab.sh(src, "rm -f /root/demo-writer.stop /root/demo-writer.count; "
                         f"setsid nohup python3 /root/demo-writer.py {disk} /root/demo-writer.stop"
                         " /root/demo-writer.count >/root/demo-writer.log 2>&1 </dev/null & "
                         "echo $! >/root/demo-writer.pid")
        time.sleep(2)
        xml = vm_xml(vm_id, hosts=(src, dst), disks=(0,))
        self.oned.put_xml(xml)
        stdin = base64.b64encode(xml.encode()).decode()
        self.tm(f"PREMIGRATE iscsi_lvm {src} {dst} {SYS}/{vm_id} {vm_id} 101", stdin=stdin)
        time.sleep(2)  # the VM still runs on the source, writing, while its memory is copied
        self.lab.sh(src, "touch /root/demo-writer.stop; pid=$(cat /root/demo-writer.pid); "
                         "while kill -0 $pid 2>/dev/null; do sleep 0.2; done")
        count = int(self.lab.sh(src, "cat /root/demo-writer.count").strip())
        self.tm(f"POSTMIGRATE iscsi_lvm {src} {dst} {SYS}/{vm_id} {vm_id} 101", stdin=stdin)
        self.lab.sh(dst, "cat > /root/demo-check.py", input=CHECKER.encode())
        bad = int(self.lab.sh(dst, f"python3 /root/demo-check.py {disk} {count}").strip())
        check(count > 0, "the writer wrote nothing during the migration")
        check(bad == 0, f"{bad} of {min(count, 256)} records written during the live migration "
                        f"are not on {dst}")
        self.notes.append(f"live migration of VM {vm_id} {src} -> {dst}: {count} synchronous "
                          f"64 KiB writes during PREMIGRATE, cycling over 256 record slots; "
                          f"every slot held its last record on {dst} ({min(count, 256)} "
                          "checked)")

    def monitor(self):
        """The system datastore's monitor as one_datastore runs it (the captured driver action,
        the datastore's VG as the cloud has it)."""
        import xml.etree.ElementTree as ET
        root = ET.fromstring((self.fixtures / "26-datastore-monitor" /
                              "02-tm-monitor.stdin.xml").read_text())
        template = root.find("DATASTORE/TEMPLATE")
        vg = template.find("VG_NAME")
        if vg is None:
            vg = ET.SubElement(template, "VG_NAME")
        vg.text = IMAGE_VG
        result = self.cloud.ds_action("monitor", 101, ET.tostring(root, encoding="unicode"))
        check(result.success, f"system datastore monitor failed: {result.info}")
        return base64.b64decode(result.info).decode().strip().splitlines()

    def probe_hosts(self):
        """What oned's monitord gets from tm_iscsi's host probe, as oned keeps it."""
        from tm_iscsi import hostfacts
        facts = {}
        for host in ("host1", "host2"):
            lines = self.cloud.host_probe(host)
            facts[host] = dict(parse_probe_template("\n".join(lines)))
            check(facts[host].get(hostfacts.STATE) == hostfacts.STATE_OK,
                  f"the host probe on {host} says {facts[host].get(hostfacts.STATE)}")
        return facts

    # -- the play --------------------------------------------------------------------------------

    def play(self):
        from harness import fixtures
        self.fixtures = fixtures.fixtures_root()
        self.step("boot the lab (storage node, host1, host2)", self.boot)
        self.lab = LabSession(api)
        self.step("install.sh on the storage node and both hosts", self.install)
        with OnedStandIn() as oned:
            self.oned = oned
            self.cloud = cloud = Cloud(self.lab, oned, self.workdir)
            # The driver's default: ssh as oneadmin, the installed helper through sudo.
            cloud.load_datastores()
            cloud.set_cache_mode(self.args.mode)
            # oned's records of the two images the demo makes (oned writes them, not the driver).
            oned.put_document(image_xml(0, name="demo-os"))
            oned.put_document(image_xml(1, name="demo-data"))
            oned.put_document(host_xml(0, "host1", vm_ids=(0, 1)))
            oned.put_document(host_xml(1, "host2", vm_ids=(2,)))
            self.act(cloud)

    def act(self, cloud):
        mib = self.args.image_mib
        raw = pattern_file(self.workdir / "os.raw", mib, "demo-os")
        self.image_sha = hashlib.sha256(raw.read_bytes()).hexdigest()

        def import_image():
            cp = cloud.ds_action("cp", 0, cloud.ds_xml("01-image-create-from-path", "02-ds-cp",
                                                       PATH=raw))
            check(cp.success, f"image import failed: {cp.info}")
            mkfs = cloud.ds_action("mkfs", 1, cloud.ds_xml("02-image-create-datablock",
                                                           "01-ds-mkfs"))
            check(mkfs.success, f"datablock failed: {mkfs.info}")

        self.step(f"import a {mib} MiB OS image and make a 1 GiB persistent datablock",
                  import_image)
        # Each VM boots (reads its disk) before the next one of the image is deployed: the
        # host's read cache copies what the first VM read when the next stack is assembled.
        self.step("deploy VM 0 on host1 (clone of the image + the persistent disk)",
                  self.deploy, 0, "host1", persistent=True)
        self.step("VM 0 reads its whole disk on host1", self.vm_reads_its_disk, 0, "host1")
        self.step("deploy VM 1 on host1 (clone; keep its disk as an image when done)",
                  self.deploy, 1, "host1",
                  user_template={"TM_ISCSI_SYNC": "0", "TM_ISCSI_SYNC_NAME": "demo-golden"})
        self.step("VM 1 reads its whole disk on host1", self.vm_reads_its_disk, 1, "host1")
        self.step("deploy VM 2 on host2 (clone)", self.deploy, 2, "host2")
        self.step("VM 2 reads its whole disk on host2", self.vm_reads_its_disk, 2, "host2")
        first, second = self.reads[0][2], self.reads[1][2]
        check(second <= 0.10 * first,
              f"VM 1, the second VM of the image on host1, read {second:.1f} MiB over iSCSI "
              f"(VM 0 read {first:.1f} MiB): the read cache did not serve it")
        written = {vm: cloud.write_on(host, f"{SYS}/{vm}/disk.0", f"vm{vm}-data-".encode(),
                                      offset_mib=2)
                   for vm, host in ((0, "host1"), (1, "host1"), (2, "host2"))}
        persistent = cloud.write_on("host1", f"{SYS}/0/disk.1", b"vm0-persistent-",
                                    offset_mib=300)
        self.step("live-migrate VM 2 host2 -> host1 while it writes",
                  self.live_migrate_under_load, 2, "host2", "host1")
        check(cloud.sha_on("host1", f"{SYS}/2/disk.0", 2) == written[2],
              "VM 2's earlier write is not on host1 after the migration")
        self.monitor_lines = self.step("monitor the system datastore (its thin pool)",
                                       self.monitor)
        self.host_facts = self.step("run the host probe on each host (oned's host template)",
                                    self.probe_hosts)

        def save_vm0():
            for disk, ds in ((0, 100), (1, 100)):
                self.tm(f"MV iscsi_lvm host1:{SYS}/0/disk.{disk} frontend:{SYS}/0/disk.{disk} "
                        f"0 {ds}")
            self.tm(f"MV iscsi_lvm host1:{SYS}/0 frontend:{SYS}/0 0 101")

        self.step("stop VM 0 (save: its write-back cache flushed, disks back to storage)",
                  save_vm0)
        check(cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-0-disk-0", 2) == written[0],
              "VM 0's write is not on the storage node after stop")
        check(cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 300) == persistent,
              "VM 0's persistent write is not in image 1 after stop")

        def resume_vm0():
            self.oned.put_xml(vm_xml(0, hosts=("host1", "host2"), disks=(0, 1)))
            self.tm(f"MV iscsi_lvm frontend:{SYS}/0 host2:{SYS}/0 0 101")
            for disk in (0, 1):
                self.tm(f"MV iscsi_lvm frontend:{SYS}/0/disk.{disk} host2:{SYS}/0/disk.{disk} "
                        "0 100")

        self.step("resume VM 0 on host2", resume_vm0)
        check(cloud.sha_on("host2", f"{SYS}/0/disk.0", 2) == written[0],
              "VM 0 lost its write on the way to host2")

        def terminate():
            self.tm(f"DELETE iscsi_lvm host2:{SYS}/0/disk.0 0 100")
            self.tm(f"MVDS iscsi_lvm host2:{SYS}/0/disk.1 {IMAGE_VG}/img-1 0 100")
            self.tm(f"DELETE iscsi_lvm host2:{SYS}/0 0 101")
            self.tm(f"DELETE iscsi_lvm host1:{SYS}/1/disk.0 1 100")
            self.tm(f"DELETE iscsi_lvm host1:{SYS}/1 1 101")
            self.tm(f"DELETE iscsi_lvm host1:{SYS}/2/disk.0 2 100")
            self.tm(f"DELETE iscsi_lvm host1:{SYS}/2 2 101")

        self.step("terminate the three VMs (VM 1's disk kept as image demo-golden)", terminate)
        kept = [i for i in self.oned.ids("image") if "demo-golden" in self.oned.xml("image", i)]
        check(len(kept) == 1, "VM 1's disk was not registered as image demo-golden")
        check(cloud.sha_on("storage", f"/dev/{IMAGE_VG}/vm-1-disk-0", 2) == written[1],
              "the kept image lost VM 1's write")
        check(cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 300) == persistent,
              "image 1 lost VM 0's persistent write")
        for offset in (0, mib // 2, mib - 1):
            check(cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-0", offset) ==
                  sha_of_file(raw, offset), f"image 0 changed at MiB {offset}")
        vm_lvs = [lv for lv in cloud.lvs() if lv.startswith("vm-") and lv != "vm-1-disk-0"]
        check(vm_lvs == [], f"terminate left {vm_lvs}")
        left = {h: [s["iqn"] for s in cloud.sessions(h) if not s["iqn"].endswith("-base")]
                for h in ("host1", "host2")}
        check(not any(left.values()), f"terminate left sessions {left}")
        self.notes.append(f"VM 1's disk kept as image {kept[0]} (demo-golden), "
                          f"{IMAGE_VG}/vm-1-disk-0, with VM 1's write in it")

    # -- the closing table -----------------------------------------------------------------------

    def as_json(self):
        return {"steps": [{"what": w, "seconds": round(s, 2), "node_calls": c}
                          for w, s, c in self.steps],
                "reads": [{"vm": v, "host": h, "iscsi_mib": round(o, 2), "read_mib": r}
                          for v, h, o, r in self.reads],
                "monitor": self.monitor_lines, "host_facts": self.host_facts,
                "notes": self.notes}

    def report(self):
        print()
        print("Each step: its wall-clock seconds in the lab, and the node calls it made (ssh round")
        print("trips from the front-end to the storage node and the hosts, each one sudo and one")
        print("helper process).")
        print()
        print(f"{'step':<72} seconds  calls")
        print("-" * 88)
        for what, seconds, calls in self.steps:
            print(f"{what[:72]:<72} {seconds:7.1f} {calls or '':>6}")
        print()
        print("Each VM reads its whole disk once; 'over iSCSI' is what the host fetched from the")
        print("storage node for it (the rest came from the host's read cache of the image).")
        print()
        print(f"{'VM':<6} {'host':<7} {'read by the VM':>15} {'over iSCSI':>12} "
              f"{'over iSCSI / read':>18}")
        print("-" * 62)
        for vm_id, host, over, read in self.reads:
            print(f"{vm_id:<6} {host:<7} {read:11.1f} MiB {over:8.1f} MiB {100 * over / read:17.1f}%")
        print()
        print("After the migration: the system datastore's monitor (the thin pool, what oned")
        print("keeps of a datastore), then what the host probe put in each host's template")
        print("(onehost show; the scheduler's SCHED_RANK can add up the TM_ISCSI_IMAGE_<id>_MB).")
        print("-" * 88)
        print(f"thin pool: {' '.join(self.monitor_lines)}")
        for host, facts in sorted(self.host_facts.items()):
            print(_facts_line(host, facts))
        for note in self.notes:
            print(f"- {note}")
        print()
        print(f"demo: done in {sum(s for _, s, _ in self.steps):.0f} s, every check passed")


def _facts_line(host, facts):
    """One host's probe attributes as a sentence with its units."""
    from tm_iscsi import hostfacts
    images = ", ".join(f"image {i}: {facts.get(hostfacts.image_attr(i))} MiB"
                       for i in facts.get(hostfacts.IMAGES, "").split()) or "no image"
    return (f"{host}: {images} held locally; read requests {facts.get(hostfacts.READ_HITS)} "
            f"served locally, {facts.get(hostfacts.READ_MISSES)} from the storage node; "
            f"{facts.get(hostfacts.WRITEBACK_STACKS)} write-back stack(s), "
            f"{facts.get(hostfacts.DIRTY_MB)} MiB dirty; cache VG "
            f"{facts.get(hostfacts.FREE_MB)} MiB free of {facts.get(hostfacts.TOTAL_MB)} MiB")


def _with_user_template(xml, attrs, name):
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)
    root.find("NAME").text = name
    user = root.find("USER_TEMPLATE")
    if user is None:
        user = ET.SubElement(root, "USER_TEMPLATE")
    for key, value in attrs.items():
        ET.SubElement(user, key).text = value
    return ET.tostring(root, encoding="unicode")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="demo/run", description="The tm_iscsi demo: boots the lab, installs tm_iscsi on its "
        "nodes with install.sh, plays VMs' lives through the driver as oned would, checks every "
        "byte that matters and ends with a table of timings, node calls, network reads and "
        "cache figures. Needs root.")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards "
                        "(lab/lab ssh storage, lab/lab status; lab/lab down removes it)")
    parser.add_argument("--image-mib", type=int, default=64,
                        help="size of the OS image in MiB (default 64)")
    parser.add_argument("--mode", default="read+writeback",
                        choices=("none", "read", "writeback", "read+writeback"),
                        help="CACHE_MODE of the datastores (default read+writeback)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tm-iscsi-demo-") as workdir:
        demo = Demo(args, workdir)
        try:
            demo.play()
            demo.report()
            if args.json:
                Path(args.json).write_text(json.dumps(demo.as_json(), indent=2))
            return 0
        except DemoFailed as failure:
            print(f"demo: FAILED: {failure}", file=sys.stderr)
            return 1
        finally:
            ship.unship(SHIP_DIR)
            if not args.keep:
                api.down()
            else:
                print("demo: the lab is still up (--keep). Look around: lab/lab ssh host1 (root);"
                      f" as the front-end does: ssh -F {config.SSH_CONFIG} storage sudo -n "
                      "tm-iscsi-node exports (oneadmin); remove it with lab/lab down")
