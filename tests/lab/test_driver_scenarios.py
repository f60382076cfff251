"""The other paths oned takes, each from its capture: terminate of an undeployed VM (epilog on
front-end paths), `recover --delete` after a failed prolog (deletes for disks that never existed,
and a persistent image that must survive), failed live migrations (failmigrate undoes premigrate),
the image datastore actions (qcow2 over http, clone, persistent-image snapshots, rm, monitor,
export), a full thin pool refusing a clone, and a CHAP datastore."""
import base64
import functools
import hashlib
import http.server
import os
import threading

import pytest

from harness.cloud import IMAGE_VG, SYSDIR, Cloud, plain_lines, sha_of_file
from harness import fixtures

HOST1 = "iqn.2026-11.lab.tm-iscsi:host1"


@pytest.fixture
def cloud(lab, tmp_path):
    with Cloud.ready(lab, tmp_path) as c:
        c.import_image(16, "scenarios")
        mkfs = c.ds_action("mkfs", 1, c.ds_xml("02-image-create-datablock", "01-ds-mkfs"))
        assert mkfs.success, mkfs.info
        yield c


def test_terminate_of_an_undeployed_vm_runs_on_frontend_paths(cloud):
    folder = "18-terminate-undeployed"
    cloud.load_vm(folder, "01-tm-clone")
    cloud.transfer_file(folder, "vm1.transfer.0.prolog")
    written = cloud.write_on("host1", f"{SYSDIR}/1/disk.1", b"persistent-of-vm1", offset_mib=9)
    cloud.transfer_file(folder, "vm1.transfer.0.stop")
    assert cloud.sessions("host1") == []
    cloud.load_vm(folder, "11-tm-delete")
    cloud.transfer_file(folder, "vm1.transfer.0.epilog")
    assert [lv for lv in cloud.lvs() if lv.startswith("vm-1-")] == []
    assert cloud.exports() == []
    assert cloud.leftovers_on_hosts() == {}
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 9) == written


def test_recover_delete_after_failed_prolog_keeps_the_persistent_image(cloud):
    folder = "20-recover-delete-prolog-failure"
    cloud.load_vm(folder, "01-tm-clone")
    ok = cloud.tm_action("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                         "host1:/var/lib/one//datastores/101/2/disk.0 2 100")
    assert ok.success, ok.info
    image_before = cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 0)
    # by now the VM is DONE (6/0); disks 1-3 were never created
    cloud.load_vm(folder, "02-tm-delete")
    cloud.transfer_file(folder, "vm2.transfer.0.delete")
    assert "img-1" in cloud.lvs() and "vm-2-disk-0" not in cloud.lvs()
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 0) == image_before
    assert cloud.leftovers_on_hosts() == {}


def test_failmigrate_undoes_premigrate_and_the_vm_keeps_running_on_the_source(cloud):
    folder = "22-live-migrate-failures"
    cloud.load_vm(folder, "01-tm-clone")
    cloud.transfer(fixtures.folder(folder).joinpath("transfer").glob("*prolog").__next__()
                   .read_text())
    written = cloud.write_on("host1", f"{SYSDIR}/4/disk.0", b"vm4-before-migration", 2)
    for pre, fail in (("05", "06"), ("07", "08")):
        stdin = (fixtures.folder(folder) / f"{pre}-tm-premigrate.stdin").read_text()
        if pre == "07":
            assert cloud.tm_action(f"PREMIGRATE iscsi_lvm host1 host2 {SYSDIR}/4 4 101",
                                   stdin=stdin).success
        fail_stdin = (fixtures.folder(folder) / f"{fail}-tm-failmigrate.stdin").read_text()
        result = cloud.tm_action(f"FAILMIGRATE iscsi_lvm host1 host2 {SYSDIR}/4 4 101",
                                 stdin=fail_stdin)
        assert result.success, result.info
        assert cloud.sessions("host2") == []
        assert cloud.lab.sh("host2", f"ls {SYSDIR}/4 2>/dev/null || true").strip() == ""
        for target in cloud.exports():
            assert target["initiators"] == [HOST1], target
        assert cloud.sha_on("host1", f"{SYSDIR}/4/disk.0", 2) == written


def _serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # stat reads only the header and hangs up: not an error
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_image_datastore_actions(cloud, tmp_path):
    # a qcow2 image (made on the storage node, which has qemu-img), served over http
    qcow = cloud.lab.sh("storage", """
        python3 -c 'import sys; sys.stdout.buffer.write(b"qcow2-payload-" * 100000)' > /tmp/p.raw
        truncate -s 32M /tmp/p.raw
        qemu-img convert -q -f raw -O qcow2 /tmp/p.raw /tmp/p.qcow2
        base64 -w0 /tmp/p.qcow2; rm -f /tmp/p.raw /tmp/p.qcow2
    """)
    web = tmp_path / "web"
    web.mkdir()
    (web / "p.qcow2").write_bytes(base64.b64decode(qcow))
    server = _serve(web)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/p.qcow2"
        stat = cloud.ds_action("stat", 5, cloud.ds_xml("01-image-create-from-path", "01-ds-stat",
                                                       PATH=url))
        assert stat.success and stat.info.strip() == "32", stat.info
        cp = cloud.ds_action("cp", 5, cloud.ds_xml("01-image-create-from-path", "02-ds-cp",
                                                   PATH=url, ID=5))
        assert cp.success, cp.info
        assert cp.info.strip() == f"{IMAGE_VG}/img-5 raw"
    finally:
        server.shutdown()
    expected = hashlib.sha256((b"qcow2-payload-" * 100000)[: 1 << 20]).hexdigest()
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-5", 0) == expected

    # a failed copy leaves nothing behind
    bad = cloud.ds_action("cp", 6, cloud.ds_xml("01-image-create-from-path", "02-ds-cp",
                                                PATH=str(tmp_path / "missing.raw"), ID=6))
    assert not bad.success and len(plain_lines(bad)) == 1
    assert "img-6" not in cloud.lvs()

    # clone: a thin snapshot, same bytes
    clone = cloud.ds_action("clone", 2, cloud.ds_xml("03-image-clone", "01-ds-clone"))
    assert clone.success and clone.info.strip() == f"{IMAGE_VG}/img-2 raw", clone.info
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-2", 3) == sha_of_file(cloud.raw, 3)

    # snapshots of the persistent image (as a VM's disk snapshots become after mvds)
    for snap, pattern in enumerate((b"p0", b"p1", b"p2")):
        cloud.write_on("storage", f"/dev/{IMAGE_VG}/img-1", pattern, offset_mib=5)
        cloud.lab.node_helper("storage", "lv-snapshot", "--vg", IMAGE_VG, "--origin", "img-1",
                              "--lv", f"img-1-snap-{snap}")
    p0 = hashlib.sha256((b"p0" * (1 << 19))).hexdigest()
    p2 = hashlib.sha256((b"p2" * (1 << 19))).hexdigest()
    folder = "19-image-snapshots-persistent"
    revert = cloud.ds_action("snap_revert", 1, cloud.ds_xml(folder, "01-ds-snap_revert"))
    assert revert.success, revert.info
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 5) == p0
    delete = cloud.ds_action("snap_delete", 1, cloud.ds_xml(folder, "02-ds-snap_delete"))
    assert delete.success, delete.info
    assert "img-1-snap-1" not in cloud.lvs()
    flatten = cloud.ds_action("snap_flatten", 1, cloud.ds_xml(folder, "03-ds-snap_flatten"))
    assert flatten.success, flatten.info
    assert cloud.sha_on("storage", f"/dev/{IMAGE_VG}/img-1", 5) == p2
    assert [lv for lv in cloud.lvs() if lv.startswith("img-1-snap")] == []

    # monitor: the thin pool's capacity, not the VG's
    mon = cloud.ds_action("monitor", 100, (fixtures.folder("26-datastore-monitor")
                                           / "01-ds-monitor.stdin.xml").read_text())
    assert mon.success, mon.info
    values = dict(l.split("=") for l in base64.b64decode(mon.info).decode().split())
    pool = cloud.lab.node_helper("storage", "pool-status", "--vg", IMAGE_VG)
    assert int(values["TOTAL_MB"]) == pool["data_total_bytes"] >> 20
    assert int(values["USED_MB"]) + int(values["FREE_MB"]) == int(values["TOTAL_MB"])
    assert int(values["USED_MB"]) > 0
    sys_xml = (fixtures.folder("26-datastore-monitor") / "02-tm-monitor.stdin.xml").read_text()
    sys_xml = sys_xml.replace("<TEMPLATE>", f"<TEMPLATE><VG_NAME>{IMAGE_VG}</VG_NAME>", 1)
    tm_mon = cloud.ds_action("monitor", 101, sys_xml)
    assert tm_mon.success, tm_mon.info
    tm_lines = base64.b64decode(tm_mon.info).decode().splitlines()
    # The pool's three figures and nothing else (Cloud.ds_action refuses what oned drops).
    assert dict(l.split("=") for l in tm_lines) == values

    # export: the image's bytes on the front-end, with their MD5
    exported = cloud.ds_action("export", 1, cloud.ds_xml(folder, "01-ds-snap_revert"))
    assert exported.success, exported.info
    path = exported.info.split("<IMPORT_SOURCE><![CDATA[")[1].split("]]>")[0]
    md5 = exported.info.split("<MD5><![CDATA[")[1].split("]]>")[0]
    assert hashlib.md5(open(path, "rb").read()).hexdigest() == md5
    os.unlink(path)

    # rm of the clone, twice (the second finds nothing and succeeds)
    for _ in range(2):
        rm = cloud.ds_action("rm", 2, cloud.ds_xml("23-image-delete-ds-rm", "01-ds-rm"))
        assert rm.success, rm.info
    assert "img-2" not in cloud.lvs() and "img-0" in cloud.lvs()


def test_full_pool_refuses_a_clone_and_changes_nothing(cloud):
    cloud.load_vm("04-vm-deploy", "01-tm-clone")
    cloud.set_template_attr("datastore", 100, "MAX_POOL_FILL", "0")
    before = (cloud.lvs(), cloud.exports())
    result = cloud.tm_action("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                             "host1:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert not result.success
    assert len(plain_lines(result)) == 1 and "full" in result.info.lower(), result.info
    assert (cloud.lvs(), cloud.exports()) == before
    assert cloud.sessions("host1") == []


def test_chap_datastore_deploys_and_names_the_secret_nowhere(cloud):
    cloud.load_vm("04-vm-deploy", "01-tm-clone")
    cloud.set_template_attr("datastore", 100, "ISCSI_CHAP_USER", "onechap")
    cloud.set_template_attr("datastore", 100, "ISCSI_CHAP_PASSWORD", "s3cret-Passw0rd")
    result = cloud.tm_action("CLONE iscsi_lvm frontend:vg-one-100/img-0 "
                             "host1:/var/lib/one//datastores/101/0/disk.0 0 100")
    assert result.success, result.info
    assert "s3cret" not in result.stderr
    assert cloud.sha_on("host1", f"{SYSDIR}/0/disk.0", 1) == sha_of_file(cloud.raw, 1)
    auth = cloud.lab.sh("storage", "cat /sys/kernel/config/target/iscsi/*/tpgt_1/attrib/"
                                   "authentication").split()
    # every target of the disk (with read caching also the image's base and the region map)
    assert auth and set(auth) == {"1"}
