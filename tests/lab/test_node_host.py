"""The node helper's host commands against the storage node's real LIO exports: attach with the
serial check, one session per target, refusals that leave nothing behind, detach, CHAP, fencing,
a storage-node crash, and re-runs from the states an interrupted command leaves."""
import hashlib
import os
import time

VG = "vg-one-100"
HOST1 = "iqn.2026-11.lab.tm-iscsi:host1"
HOST2 = "iqn.2026-11.lab.tm-iscsi:host2"
MIB = 1024 * 1024
DATA = bytes((i + 11) % 256 for i in range(256)) * 4096 * 8  # 8 MiB, counter bytes
LINK = "/var/lib/one/datastores/0/42/disk.0"


def iqn_of(lv):
    return f"iqn.2026-11.io.tm-iscsi:{VG}.{lv}"


def refused(lab, node, *args, input=None):
    """A command that must fail with exactly one plain stderr line; returns it."""
    result = lab.node_helper(node, *args, input=input, check=False)
    assert result.returncode in (1, 2), (args, result.returncode, result.stdout)
    lines = [line for line in result.stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith("INFO: ")]
    assert len(lines) == 1, lines
    return lines[0]


def storage_with_image(lab, *lvs):
    """VG, pool and 16 MiB thin LVs holding DATA (the first one written, the others its
    snapshots: O(1) and each with its own serial)."""
    lab.sh("storage", f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")
    lab.node_helper("storage", "pool-ensure", "--vg", VG)
    first, *others = lvs
    lab.node_helper("storage", "lv-create", "--vg", VG, "--lv", first, "--size-mib", "16")
    lab.node_helper("storage", "lv-write", "--vg", VG, "--lv", first, "--size-bytes",
                    str(len(DATA)), input=DATA)
    for lv in others:
        lab.node_helper("storage", "lv-snapshot", "--vg", VG, "--origin", first, "--lv", lv)


def export(lab, lv, initiator, *extra):
    return lab.node_helper("storage", "export", "--vg", VG, "--lv", lv, "--initiator", initiator,
                           *extra)


def attach(lab, node, lv, serial, *extra):
    return lab.node_helper(node, "attach", "--portal", "storage", "--iqn", iqn_of(lv),
                           "--serial", serial, *extra)


def read_sha(lab, node, path, mib=8):
    return lab.sh(node, f"dd if={path} bs=1M count={mib} iflag=direct status=none | "
                        "sha256sum").split()[0]


def exists(lab, node, path):
    return lab.sh(node, f"if [ -e {path} ] || [ -L {path} ]; then echo yes; fi").strip() == "yes"


def iscsi_state(lab, node):
    """(sessions, node records, SCSI disks) as the host has them."""
    out = lab.sh(node, """
        s=$({ iscsiadm -m session 2>/dev/null || true; } | wc -l)
        r=$({ iscsiadm -m node 2>/dev/null || true; } | wc -l)
        d=$(ls /sys/class/scsi_disk 2>/dev/null | wc -l)
        echo $s $r $d""")
    return tuple(int(x) for x in out.split())


def test_attach_detach_and_refusals(lab):
    storage_with_image(lab, "img-1", "img-2")
    exported = export(lab, "img-1", HOST1)
    serial = exported["serial"]
    expected = hashlib.sha256(DATA).hexdigest()

    assert lab.node_helper("host1", "initiator") == {"iqn": HOST1}
    start = time.monotonic()
    out = attach(lab, "host1", "img-1", serial, "--link", LINK)
    elapsed = time.monotonic() - start
    by_path = f"/dev/disk/by-path/ip-10.213.{77 + _lab_id()}.10:3260-iscsi-{iqn_of('img-1')}-lun-0"
    assert out["stable_path"] == by_path and out["link"] == LINK
    assert out["session_reused"] is False and out["device"].startswith("/dev/sd")
    assert lab.sh("host1", f"readlink {LINK}").strip() == by_path
    assert read_sha(lab, "host1", LINK) == expected
    assert elapsed < 20

    # Again: the same session, the same device, never a second session.
    again = attach(lab, "host1", "img-1", serial, "--link", LINK)
    assert again == dict(out, session_reused=True)
    assert iscsi_state(lab, "host1") == (1, 1, 1)
    sessions = lab.node_helper("host1", "sessions")["sessions"]
    assert [(s["iqn"], s["devices"]) for s in sessions] == [
        (iqn_of("img-1"), [{"lun": 0, "device": out["device"], "serial": serial}])]

    # A wrong serial on the existing session: refused, the link stays as it was.
    line = refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--serial", "00000000-0000-0000-0000-000000000000", "--link", LINK)
    assert "expected 00000000-0000-0000-0000-000000000000" in line and serial in line
    assert out["device"] in line
    assert lab.sh("host1", f"readlink {LINK}").strip() == by_path

    # A wrong serial on a new session: refused and the session and record it made are gone.
    export(lab, "img-2", HOST1)
    line = refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-2"),
                   "--serial", serial, "--link", "/var/lib/one/datastores/0/42/disk.1")
    assert f"expected {serial}" in line
    assert iscsi_state(lab, "host1") == (1, 1, 1)
    assert lab.sh("host1", "ls /var/lib/one/datastores/0/42").split() == ["disk.0"]

    # host2 has no ACL: a clear refusal and no session, record or disk left on host2.
    line = refused(lab, "host2", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--serial", serial, "--link", LINK)
    assert "authorization" in line and HOST2 in line
    assert iscsi_state(lab, "host2") == (0, 0, 0)
    assert not exists(lab, "host2", LINK)

    # A device something is stacked on (a dm-cache, here a linear map) is not pulled away.
    sectors = lab.sh("host1", f"blockdev --getsz {out['device']}").strip()
    lab.sh("host1", f"dmsetup create holder --table '0 {sectors} linear {out['device']} 0'")
    line = refused(lab, "host1", "detach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--link", LINK)
    assert "in use by" in line and "holder" in line
    assert iscsi_state(lab, "host1") == (1, 1, 1)
    assert lab.sh("host1", f"readlink {LINK}").strip() == by_path
    lab.sh("host1", "dmsetup remove holder")

    # Detach: link, disk, session and record go; again: nothing to do.
    out = lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                          "--link", LINK)
    assert out == {"logged_out": True, "link_removed": True, "link_note": None}
    assert iscsi_state(lab, "host1") == (0, 0, 0)
    assert not exists(lab, "host1", LINK)
    assert lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                           "--link", LINK) == {"logged_out": False, "link_removed": False,
                                               "link_note": None}
    # A link that is not ours is left alone and the answer says so.
    lab.sh("host1", f"ln -sfn /dev/null {LINK}")
    out = lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                          "--link", LINK)
    assert out["link_removed"] is False and "/dev/null" in out["link_note"]
    assert lab.sh("host1", f"readlink {LINK}").strip() == "/dev/null"

    # Unexport: the target is gone and a new attach is refused cleanly.
    assert lab.node_helper("storage", "unexport", "--vg", VG, "--lv", "img-1")[
        "removed_target"] is True
    assert iqn_of("img-1") not in [t["iqn"] for t in
                                   lab.node_helper("storage", "exports")["targets"]]
    refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
            "--serial", serial, "--timeout", "5")
    assert iscsi_state(lab, "host1") == (0, 0, 0)

    # Bad input never reaches iscsiadm.
    assert "--portal" in refused(lab, "host1", "attach", "--portal", "storage;reboot",
                                    "--iqn", iqn_of("img-1"), "--serial", serial)
    assert "not a valid" in refused(lab, "host1", "attach", "--portal", "storage",
                                    "--iqn", iqn_of("img-1"), "--serial", serial,
                                    "--link", "/var/lib/one/../../etc/passwd")


def _lab_id():
    return int(os.environ.get("TM_ISCSI_LAB_ID", "0"))


def test_chap(lab):
    storage_with_image(lab, "img-1")
    # The secret is the first line of stdin: argv shows in `ps` to every user of the node.
    serial = lab.node_helper("storage", "export", "--vg", VG, "--lv", "img-1", "--initiator",
                             HOST1, "--chap-user", "oneadmin-ds100",
                             input=b"s3cret-Pass-1!\n")["serial"]
    tpg = f"/sys/kernel/config/target/iscsi/{iqn_of('img-1')}/tpgt_1"
    assert lab.sh("storage", f"cat {tpg}/attrib/authentication").strip() == "1"
    assert lab.sh("storage", f"cat {tpg}/acls/{HOST1}/auth/password").strip() == "s3cret-Pass-1!"

    line = refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--serial", serial)
    assert "authorization" in line
    line = refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--serial", serial, "--chap-user", "oneadmin-ds100", input=b"wrong-Pass-22\n")
    assert "authorization" in line and "wrong-Pass-22" not in line
    assert iscsi_state(lab, "host1") == (0, 0, 0)
    assert "first line of stdin" in refused(lab, "host1", "attach", "--portal", "storage", "--iqn",
                                            iqn_of("img-1"), "--serial", serial, "--chap-user",
                                            "oneadmin-ds100")

    out = lab.node_helper("host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                          "--serial", serial, "--chap-user", "oneadmin-ds100", "--link", LINK,
                          input=b"s3cret-Pass-1!\n")
    assert read_sha(lab, "host1", LINK) == hashlib.sha256(DATA).hexdigest()
    assert out["session_reused"] is False

    # Another host without CHAP would switch the target's authentication off: refused.
    assert "CHAP" in refused(lab, "storage", "export", "--vg", VG, "--lv", "img-1",
                             "--initiator", HOST2)
    assert "--chap-password" in refused(lab, "storage", "export", "--vg", VG, "--lv", "img-1",
                                        "--initiator", HOST2, "--chap-user", "x",
                                        "--chap-password", "in-argv-Pass-1")
    lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                    "--link", LINK)
    assert iscsi_state(lab, "host1") == (0, 0, 0)


def test_fence(lab):
    storage_with_image(lab, "img-1", "vm-1-disk-0")
    serial = export(lab, "img-1", HOST1)["serial"]
    export(lab, "img-1", HOST2)
    clone_serial = export(lab, "vm-1-disk-0", HOST1)["serial"]
    attach(lab, "host1", "img-1", serial)
    attach(lab, "host1", "vm-1-disk-0", clone_serial, "--link", LINK)
    attach(lab, "host2", "img-1", serial, "--link", LINK)

    out = lab.node_helper("storage", "fence", "--initiator", HOST1)
    assert out == {"initiator": HOST1, "targets": sorted([iqn_of("img-1"),
                                                          iqn_of("vm-1-disk-0")])}
    targets = {t["iqn"]: t["initiators"] for t in lab.node_helper("storage", "exports")[
        "targets"]}
    assert targets == {iqn_of("img-1"): [HOST2], iqn_of("vm-1-disk-0"): []}
    saved = lab.sh("storage", "cat /etc/target/saveconfig.json")
    assert HOST1 not in saved and HOST2 in saved
    # host1's sessions are cut: none of them is logged in any more.
    deadline = time.monotonic() + 20
    while True:
        states = [s["state"] for s in lab.node_helper("host1", "sessions")["sessions"]]
        if all(state != "LOGGED_IN" for state in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    # host2 still reads, and a new login of host1 is refused.
    assert read_sha(lab, "host2", LINK) == hashlib.sha256(DATA).hexdigest()
    assert lab.node_helper("storage", "fence", "--initiator", HOST1) == {
        "initiator": HOST1, "targets": []}

    # The fenced host comes back and cleans up without hanging on its dead sessions.
    start = time.monotonic()
    for lv in ("img-1", "vm-1-disk-0"):
        lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of(lv),
                        "--link", LINK)
    assert time.monotonic() - start < 30
    assert iscsi_state(lab, "host1") == (0, 0, 0)
    line = refused(lab, "host1", "attach", "--portal", "storage", "--iqn", iqn_of("img-1"),
                   "--serial", serial, "--timeout", "5")
    assert "authorization" in line
    assert iscsi_state(lab, "host1") == (0, 0, 0)


def test_storage_reboot_restores_exports(lab):
    # A clone (thin snapshot) is exported: it must come back active after the crash too.
    storage_with_image(lab, "img-1", "vm-1-disk-0")
    serial = export(lab, "vm-1-disk-0", HOST1)["serial"]
    attach(lab, "host1", "vm-1-disk-0", serial, "--link", LINK)
    # Flushed (conv=fsync): LIO shows the thin LV's volatile write cache to the host (WCE=1),
    # so, as with any disk, only what the host flushed must survive the storage node's crash.
    lab.sh("host1", f"dd if=/dev/urandom of={LINK} bs=1M seek=9 count=1 oflag=direct "
                    "conv=fsync status=none")
    written = read_sha(lab, "host1", f"{LINK} skip=9", mib=1)
    before = lab.node_helper("storage", "exports")

    lab.api.reboot("storage")  # a crash (kill) and a boot with the same disks
    assert lab.node_helper("storage", "exports") == before

    # The host's session recovers on its own; attach finds it and the data is there.
    out = attach(lab, "host1", "vm-1-disk-0", serial, "--link", LINK, "--timeout", "90")
    assert out["session_reused"] is True
    assert read_sha(lab, "host1", LINK) == hashlib.sha256(DATA).hexdigest()
    assert read_sha(lab, "host1", f"{LINK} skip=9", mib=1) == written
    # And a fresh login after a detach works as well.
    lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn_of("vm-1-disk-0"),
                    "--link", LINK)
    out = attach(lab, "host1", "vm-1-disk-0", serial, "--link", LINK)
    assert out["session_reused"] is False
    assert read_sha(lab, "host1", LINK) == hashlib.sha256(DATA).hexdigest()


def test_host_converges_from_partial_states(lab):
    storage_with_image(lab, "img-1")
    serial = export(lab, "img-1", HOST1)["serial"]
    iqn = iqn_of("img-1")
    portal = f"10.213.{77 + _lab_id()}.10:3260"

    # A record left by an attach killed before its login (and set to log in at boot).
    lab.sh("host1", f"""
        iscsiadm -m node -T {iqn} -p {portal} -o new >/dev/null
        iscsiadm -m node -T {iqn} -p {portal} -o update -n node.startup -v automatic""")
    attach(lab, "host1", "img-1", serial, "--link", LINK)
    assert "node.startup = manual" in lab.sh("host1", f"iscsiadm -m node -T {iqn} -p {portal}")

    # Killed after the login but before the link: the re-run links.
    lab.sh("host1", f"rm {LINK}")
    assert attach(lab, "host1", "img-1", serial, "--link", LINK)["session_reused"] is True
    assert lab.sh("host1", f"readlink {LINK}").strip().endswith(f"{iqn}-lun-0")

    # A detach killed after deleting the disk: attach rescans it back; detach finishes.
    lab.sh("host1", f"echo 1 > /sys/block/$(basename $(readlink -f {LINK}))/device/delete")
    out = attach(lab, "host1", "img-1", serial, "--link", LINK)
    assert out["session_reused"] is True
    assert read_sha(lab, "host1", LINK) == hashlib.sha256(DATA).hexdigest()
    lab.sh("host1", f"echo 1 > /sys/block/$(basename $(readlink -f {LINK}))/device/delete")
    lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn, "--link", LINK)
    assert iscsi_state(lab, "host1") == (0, 0, 0)

    # A detach killed after the logout, before the record was deleted.
    attach(lab, "host1", "img-1", serial, "--link", LINK)
    lab.sh("host1", f"iscsiadm -m node -T {iqn} -p {portal} --logout >/dev/null")
    out = lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn, "--link", LINK)
    assert out["logged_out"] is False and out["link_removed"] is True
    assert iscsi_state(lab, "host1") == (0, 0, 0)

    # attach and detach killed at arbitrary points, then re-run: always one clean session,
    # and a clean host after the detach.
    for delay in ("0.4", "0.8", "1.2"):
        for command in ("attach", "detach"):
            extra = f"--serial {serial} --link {LINK}" if command == "attach" else \
                f"--link {LINK}"
            lab.sh("host1", f"""
                env PYTHONPATH=/opt/tm_iscsi /opt/tm_iscsi-venv/bin/python -m tm_iscsi.node \
                    {command} --portal storage --iqn {iqn} {extra} >/dev/null 2>&1 &
                pid=$!
                sleep {delay}; kill -9 $pid 2>/dev/null || true; wait $pid || true""")
            if command == "attach":
                attach(lab, "host1", "img-1", serial, "--link", LINK)
                assert iscsi_state(lab, "host1") == (1, 1, 1)
                assert read_sha(lab, "host1", LINK) == hashlib.sha256(DATA).hexdigest()
            else:
                lab.node_helper("host1", "detach", "--portal", "storage", "--iqn", iqn,
                                "--link", LINK)
                assert iscsi_state(lab, "host1") == (0, 0, 0)
                assert not exists(lab, "host1", LINK)

