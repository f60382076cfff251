"""The node helper's storage commands on the lab's real kernel: thin pool, LVs, data in and out,
O(1) snapshots, the fill limit, and LIO exports with their saved configuration.

Each LVM command costs about a second inside UML, so each test walks through many assertions on
one set-up rather than paying for a set-up per assertion."""
import hashlib
import json
import time

VG = "vg-one-100"
HOST1 = "iqn.2026-11.lab.tm-iscsi:host1"
HOST2 = "iqn.2026-11.lab.tm-iscsi:host2"
MIB = 1024 * 1024


def pattern(mib, seed=0):
    """Counter bytes shifted by `seed`: a wrong offset or a stale block shows."""
    block = bytes((i + seed) % 256 for i in range(256)) * 4096
    return block * mib


def sha(data):
    return hashlib.sha256(data).hexdigest()


def helper(lab, *args, node="storage", input=None):
    return lab.node_helper(node, *args, input=input)


def refused(lab, *args, node="storage", input=None):
    """Run a command that must fail: exit 1 (2 for bad usage) and exactly one plain stderr line
    (INFO lines are progress, not the reason). Returns that line."""
    result = lab.node_helper(node, *args, input=input, check=False)
    assert result.returncode in (1, 2), (args, result.returncode, result.stdout)
    assert result.stdout.strip() == b"", result.stdout
    lines = [line for line in result.stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith("INFO: ")]
    assert len(lines) == 1, lines
    return lines[0]


def make_vg(lab):
    lab.sh("storage", f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")


def lv_bytes(lab, lv, size):
    result = lab.node_helper("storage", "lv-read", "--vg", VG, "--lv", lv, check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == size
    return result.stdout


def lv_sha(lab, lv):
    """sha256 of what lv-read streams, computed on the node (no bulk data over ssh)."""
    out = lab.sh("storage", f"env PYTHONPATH=/opt/tm_iscsi /opt/tm_iscsi-venv/bin/python -m "
                            f"tm_iscsi.node lv-read --vg {VG} --lv {lv} | sha256sum")
    return out.split()[0]


def padded_sha(data, size):
    return sha(data + bytes(size - len(data)))


def saved_config(lab):
    return json.loads(lab.sh("storage", "cat /etc/target/saveconfig.json"))


def test_pool_lvs_data_and_snapshots(lab):
    # A VG that is not there: the error names it and says how to make it.
    line = refused(lab, "pool-ensure", "--vg", VG)
    assert VG in line and "vgcreate" in line
    make_vg(lab)
    assert helper(lab, "pool-ensure", "--vg", VG) == {"vg": VG, "pool": "tpool", "created": True}
    assert helper(lab, "pool-ensure", "--vg", VG)["created"] is False
    status = helper(lab, "pool-status", "--vg", VG)
    vg_size = int(lab.sh("storage", f"vgs --noheadings --units b --nosuffix -o vg_size {VG}"))
    # The pool's capacity, not the VG's: 90% of it by default.
    assert 0.85 * vg_size < status["data_total_bytes"] <= 0.9 * vg_size
    assert status["data_used_bytes"] == 0 and status["metadata_total_bytes"] > 0
    assert set(status) == {"vg", "pool", "data_total_bytes", "data_used_bytes", "data_percent",
                           "metadata_total_bytes", "metadata_used_bytes", "metadata_percent",
                           "vg_free_bytes"}

    tags = ["--tag", "tm_iscsi", "--tag", "tm_iscsi.kind=image", "--tag", "tm_iscsi.image=7"]
    img = helper(lab, "lv-create", "--vg", VG, "--lv", "img-7", "--size-mib", "64", *tags)
    assert img == {"vg": VG, "lv": "img-7", "path": f"/dev/{VG}/img-7",
                   "size_bytes": 64 * MIB, "created": True}
    # Same request again: nothing to do, same answer shape.
    again = helper(lab, "lv-create", "--vg", VG, "--lv", "img-7", "--size-mib", "64", *tags)
    assert again == dict(img, created=False)
    # Someone else's LV of that name is not taken over.
    assert "tags" in refused(lab, "lv-create", "--vg", VG, "--lv", "img-7", "--size-mib", "64",
                             "--tag", "tm_iscsi.kind=clone")

    # Raw upload: a pattern that covers part of the LV; the rest stays zeros.
    data = pattern(8, seed=7)
    written = helper(lab, "lv-write", "--vg", VG, "--lv", "img-7", input=data)
    assert written == {"vg": VG, "lv": "img-7", "bytes_written": len(data)}
    assert lv_sha(lab, "img-7") == padded_sha(data, 64 * MIB)
    # Bigger than the LV, with its length announced: refused before a byte is written.
    assert "larger than the LV" in refused(lab, "lv-write", "--vg", VG, "--lv", "img-7",
                                           "--size-bytes", str(65 * MIB), input=pattern(65))
    # Announced length and stream disagree: the upload is reported as cut short.
    assert "cut short" in refused(lab, "lv-write", "--vg", VG, "--lv", "img-7",
                                  "--size-bytes", str(2 * len(data)), input=data)
    assert lv_sha(lab, "img-7") == padded_sha(data, 64 * MIB)

    # qcow2 upload, made with qemu-img on the node: converted onto the LV, spool removed.
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-8", "--size-mib", "32")
    # A pipe of unknown length that overflows the LV: still an error (found at the end).
    assert "larger than the LV" in refused(lab, "lv-write", "--vg", VG, "--lv", "img-8",
                                           input=pattern(33))
    qcow2 = lab.run("storage", ["bash", "-c", """
        set -e; cd /tmp
        python3 -c 'import sys; sys.stdout.buffer.write(bytes((i + 3) % 256 for i in range(256)) * 4096 * 12)' > q.raw
        qemu-img convert -q -f raw -O qcow2 q.raw q.qcow2
        qemu-img resize -q q.qcow2 32M
        cat q.qcow2"""], check=True).stdout
    spool_before = lab.sh("storage", "ls /var/tmp")
    out = helper(lab, "lv-write", "--vg", VG, "--lv", "img-8", "--format", "qcow2", input=qcow2)
    assert out["bytes_written"] == 32 * MIB
    content = lv_bytes(lab, "img-8", 32 * MIB)
    assert content == pattern(12, seed=3) + bytes(20 * MIB)
    too_big = lab.run("storage", ["bash", "-c", "cd /tmp && qemu-img resize -q q.qcow2 64M && "
                                                "cat q.qcow2"], check=True).stdout
    assert "larger than the LV" in refused(lab, "lv-write", "--vg", VG, "--lv", "img-8",
                                           "--format", "qcow2", input=too_big)
    assert "qcow2" in refused(lab, "lv-write", "--vg", VG, "--lv", "img-8", "--format", "qcow2",
                              input=b"not an image\n" * 100)
    assert lab.sh("storage", "ls /var/tmp") == spool_before
    assert lv_sha(lab, "img-8") == sha(content)

    # Thin snapshot: same bytes, larger if asked, idempotent; another origin is refused.
    snap = helper(lab, "lv-snapshot", "--vg", VG, "--origin", "img-7", "--lv", "vm-1-disk-0",
                  "--size-mib", "96", "--tag", "tm_iscsi.kind=clone")
    assert snap == {"vg": VG, "lv": "vm-1-disk-0", "origin": "img-7",
                    "path": f"/dev/{VG}/vm-1-disk-0", "size_bytes": 96 * MIB, "created": True}
    assert helper(lab, "lv-snapshot", "--vg", VG, "--origin", "img-7", "--lv", "vm-1-disk-0",
                  "--size-mib", "96") == dict(snap, created=False)
    assert "snapshot of img-7" in refused(lab, "lv-snapshot", "--vg", VG, "--origin", "img-8",
                                          "--lv", "vm-1-disk-0")
    assert lv_sha(lab, "vm-1-disk-0") == padded_sha(data, 96 * MIB)
    info = helper(lab, "lv-info", "--vg", VG, "--lv", "vm-1-disk-0")
    # The share of the thin LV that is mapped (the image's data, shared with it).
    assert 0 < info.pop("data_percent") <= 100
    # The helper stamps its ownership tag on whatever it makes.
    assert info == {"vg": VG, "lv": "vm-1-disk-0", "exists": True, "size_bytes": 96 * MIB,
                    "origin": "img-7", "tags": ["tm_iscsi", "tm_iscsi.kind=clone"],
                    "active": True, "path": f"/dev/{VG}/vm-1-disk-0"}
    # Active without -K: the activation-skip flag is off, so boot-time activation exports it.
    skip = lab.sh("storage", f"lvs --noheadings -o lv_skip_activation {VG}/vm-1-disk-0")
    assert skip.strip() == ""

    # Grow only.
    assert helper(lab, "lv-resize", "--vg", VG, "--lv", "img-8", "--size-mib", "48") == {
        "vg": VG, "lv": "img-8", "path": f"/dev/{VG}/img-8", "size_bytes": 48 * MIB,
        "resized": True}
    assert helper(lab, "lv-resize", "--vg", VG, "--lv", "img-8", "--size-mib", "48")[
        "resized"] is False
    assert "shrinking" in refused(lab, "lv-resize", "--vg", VG, "--lv", "img-8",
                                  "--size-mib", "16")

    # Full copy (benchmark baseline) and mkfs.
    helper(lab, "lv-create", "--vg", VG, "--lv", "vm-95-disk-0", "--size-mib", "64")
    assert helper(lab, "lv-copy", "--vg", VG, "--src", "img-7", "--dst", "vm-95-disk-0")[
        "bytes"] == 64 * MIB
    assert lv_sha(lab, "vm-95-disk-0") == padded_sha(data, 64 * MIB)
    assert "smaller" in refused(lab, "lv-copy", "--vg", VG, "--src", "vm-1-disk-0",
                                "--dst", "vm-95-disk-0")
    helper(lab, "lv-create", "--vg", VG, "--lv", "vm-91-disk-0", "--size-mib", "32")
    assert helper(lab, "lv-mkfs", "--vg", VG, "--lv", "vm-91-disk-0", "--fs", "ext4")["formatted"]
    assert helper(lab, "lv-mkfs", "--vg", VG, "--lv", "vm-91-disk-0", "--fs", "ext4")[
        "formatted"] is False
    assert lab.sh("storage", f"blkid -o value -s TYPE /dev/{VG}/vm-91-disk-0").strip() == "ext4"
    assert "ext4" in refused(lab, "lv-mkfs", "--vg", VG, "--lv", "vm-91-disk-0", "--fs", "swap")

    listing = helper(lab, "lv-list", "--vg", VG)
    assert [row["lv"] for row in listing["lvs"]] == ["img-7", "img-8", "vm-1-disk-0",
                                                     "vm-91-disk-0", "vm-95-disk-0"]
    assert helper(lab, "lv-list", "--vg", VG, "--tag", "tm_iscsi.image=7")["lvs"] == [
        {"lv": "img-7", "size_bytes": 64 * MIB, "origin": None,
         "tags": ["tm_iscsi", "tm_iscsi.image=7", "tm_iscsi.kind=image"]}]

    # Remove: the tag guard, then idempotent.
    assert "tm_iscsi.kind=image" in refused(lab, "lv-remove", "--vg", VG, "--lv", "vm-91-disk-0",
                                            "--require-tag", "tm_iscsi.kind=image")
    assert helper(lab, "lv-remove", "--vg", VG, "--lv", "vm-91-disk-0")["removed"] is True
    assert helper(lab, "lv-remove", "--vg", VG, "--lv", "vm-91-disk-0") == {
        "vg": VG, "lv": "vm-91-disk-0", "removed": False}
    assert helper(lab, "lv-info", "--vg", VG, "--lv", "vm-91-disk-0")["exists"] is False

    # Re-running finished commands changes nothing.
    before = helper(lab, "lv-list", "--vg", VG)
    helper(lab, "pool-ensure", "--vg", VG)
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-7", "--size-mib", "64", *tags)
    helper(lab, "lv-snapshot", "--vg", VG, "--origin", "img-7", "--lv", "vm-1-disk-0")
    helper(lab, "lv-resize", "--vg", VG, "--lv", "img-8", "--size-mib", "48")
    assert helper(lab, "lv-list", "--vg", VG) == before


def test_snapshot_is_o1_and_fill_limit(lab):
    make_vg(lab)
    # A small pool (1% of the 24 GiB VG) that a few dd's fill.
    helper(lab, "pool-ensure", "--vg", VG, "--data-percent", "1")
    pool = helper(lab, "pool-status", "--vg", VG)
    assert pool["data_total_bytes"] < 300 * MIB

    # O(1): an 8 GiB origin with data snapshots as fast as a 64 MiB one, and copies nothing.
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-96", "--size-mib", str(8 * 1024))
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-97", "--size-mib", "64")
    lab.sh("storage", f"""
        dd if=/dev/zero of=/dev/{VG}/img-96 bs=4M count=16 oflag=direct status=none
        dd if=/dev/zero of=/dev/{VG}/img-96 bs=4M count=4 seek=2000 oflag=direct status=none
        dd if=/dev/zero of=/dev/{VG}/img-97 bs=4M count=16 oflag=direct status=none""")
    used_before = helper(lab, "pool-status", "--vg", VG)["data_used_bytes"]
    times = {}
    for origin in ("img-97", "img-96"):
        start = time.monotonic()
        helper(lab, "lv-snapshot", "--vg", VG, "--origin", origin, "--lv", f"{origin}-snap-1")
        times[origin] = time.monotonic() - start
    # Loose on purpose: UML timing is noisy; the pool check below is the exact proof.
    assert times["img-96"] < 3 * times["img-97"] + 2.0, times
    assert helper(lab, "pool-status", "--vg", VG)["data_used_bytes"] == used_before
    big_snap = helper(lab, "lv-info", "--vg", VG, "--lv", "img-96-snap-1")
    assert big_snap["size_bytes"] == 8 * 1024 * MIB and big_snap["origin"] == "img-96"

    # Fill the pool past 90%: new LVs and snapshots are refused and nothing changes.
    room = pool["data_total_bytes"] - used_before
    fill_mib = int(room * 0.95) // MIB - 1
    helper(lab, "lv-create", "--vg", VG, "--lv", "vm-94-disk-0", "--size-mib", str(fill_mib + 4))
    lab.sh("storage", f"dd if=/dev/zero of=/dev/{VG}/vm-94-disk-0 bs=1M count={fill_mib} "
                      "oflag=direct status=none")
    full = helper(lab, "pool-status", "--vg", VG)
    assert full["data_percent"] > 90, full
    before = helper(lab, "lv-list", "--vg", VG)
    line = refused(lab, "lv-create", "--vg", VG, "--lv", "vm-92-disk-0", "--size-mib", "16")
    assert "too full" in line and f"{VG}/tpool" in line
    assert "too full" in refused(lab, "lv-snapshot", "--vg", VG, "--origin", "img-97",
                                 "--lv", "img-97-snap-2")
    assert helper(lab, "lv-list", "--vg", VG) == before
    # An explicit higher limit lets the caller through (the front-end passes the datastore's).
    assert helper(lab, "lv-create", "--vg", VG, "--lv", "vm-92-disk-0", "--size-mib", "16",
                  "--max-fill", "99")["created"] is True


def test_export_unexport_and_saved_config(lab):
    make_vg(lab)
    helper(lab, "pool-ensure", "--vg", VG)
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-1", "--size-mib", "16")
    assert "does not exist" in refused(lab, "export", "--vg", VG, "--lv", "img-77",
                                       "--initiator", HOST1)
    assert "not a valid" in refused(lab, "export", "--vg", VG, "--lv", "img-1",
                                    "--initiator", "iqn.2026-11.x:$(reboot)")

    out = helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST1)
    iqn = f"iqn.2026-11.io.tm-iscsi:{VG}.img-1"
    serial = out["serial"]
    assert out == {"iqn": iqn, "lun": 0, "serial": serial, "port": 3260,
                   "initiators": [HOST1]}
    # LIO state as the kernel has it: no demo mode, one ACL, LUN 0 on the LV.
    tpg = f"/sys/kernel/config/target/iscsi/{iqn}/tpgt_1"
    assert lab.sh("storage", f"cat {tpg}/attrib/generate_node_acls {tpg}/attrib/authentication "
                             f"{tpg}/enable").split() == ["0", "0", "1"]
    assert lab.sh("storage", f"ls {tpg}/acls").split() == [HOST1]
    assert lab.sh("storage", f"cat {tpg}/acls/{HOST1}/lun_0/write_protect").strip() == "0"

    # A second host gets its own ACL on the same target; --readonly write-protects only its LUN.
    out2 = helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST2, "--readonly")
    assert out2["initiators"] == [HOST1, HOST2] and out2["serial"] == serial
    assert lab.sh("storage", f"cat {tpg}/acls/{HOST2}/lun_0/write_protect").strip() == "1"

    listing = helper(lab, "exports")
    assert listing["targets"] == [{"iqn": iqn, "backstore": f"{VG}.img-1",
                                   "dev": f"/dev/{VG}/img-1", "serial": serial,
                                   "initiators": [HOST1, HOST2]}]
    # ...and what the saved config (restored at boot) holds, read as root for doctor.
    assert listing["saved"] == {"exists": True, "readable": True,
                                "targets": {iqn: [HOST1, HOST2]}}
    # The saved config is exactly the live one, and a re-run leaves the file alone.
    live = json.loads(lab.sh("storage", "/opt/tm_iscsi-venv/bin/python -W ignore -c "
                                        "'import json, rtslib_fb; "
                                        "print(json.dumps(rtslib_fb.RTSRoot().dump()))'"))
    assert saved_config(lab) == live
    mtime = lab.sh("storage", "stat -c %Y.%y /etc/target/saveconfig.json")
    assert helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST1) == dict(
        out, initiators=[HOST1, HOST2])
    assert helper(lab, "exports") == listing
    assert lab.sh("storage", "stat -c %Y.%y /etc/target/saveconfig.json") == mtime
    assert lab.sh("storage", "stat -c %a /etc/target/saveconfig.json").strip() == "600"
    assert lab.sh("storage", "ls -A /etc/target | grep -c tmp || true").strip() == "0"

    # An exported LV cannot be removed; the error names the target.
    assert iqn in refused(lab, "lv-remove", "--vg", VG, "--lv", "img-1")

    # Unexport one host, then the last one: the target and the backstore go.
    out = helper(lab, "unexport", "--vg", VG, "--lv", "img-1", "--initiator", HOST2)
    assert out == {"iqn": iqn, "removed_target": False, "initiators": [HOST1]}
    out = helper(lab, "unexport", "--vg", VG, "--lv", "img-1", "--initiator", HOST1)
    assert out == {"iqn": iqn, "removed_target": True, "initiators": []}
    assert helper(lab, "exports")["targets"] == []
    assert lab.sh("storage", "find /sys/kernel/config/target/core -maxdepth 2 -name '*img-1*' "
                             "| wc -l").strip() == "0"
    assert saved_config(lab)["targets"] == [] and saved_config(lab)["storage_objects"] == []
    assert helper(lab, "unexport", "--vg", VG, "--lv", "img-1") == {
        "iqn": iqn, "removed_target": False, "initiators": []}
    assert helper(lab, "lv-remove", "--vg", VG, "--lv", "img-1")["removed"] is True


def test_export_converges_from_partial_states(lab):
    """What an interrupted export or unexport leaves behind, made by hand; re-running the
    command must finish the job."""
    make_vg(lab)
    helper(lab, "pool-ensure", "--vg", VG)
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-1", "--size-mib", "16")
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-2", "--size-mib", "16")
    iqn1 = f"iqn.2026-11.io.tm-iscsi:{VG}.img-1"
    # Killed after the target was made but before the ACL (and with a backstore whose serial
    # never got written: rtslib sets it after enabling the backstore).
    lab.sh("storage", f"""/opt/tm_iscsi-venv/bin/python -W ignore - <<'PY'
from rtslib_fb import BlockStorageObject, Target, TPG, FabricModule
BlockStorageObject("{VG}.img-1", dev="/dev/{VG}/img-1", wwn="half-made-serial")
TPG(Target(FabricModule("iscsi"), "{iqn1}"), 1)
PY""")
    out = helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST1)
    assert out["initiators"] == [HOST1]
    target = helper(lab, "exports")["targets"][0]
    assert target["serial"] == out["serial"] != "half-made-serial"
    tpg = f"/sys/kernel/config/target/iscsi/{iqn1}/tpgt_1"
    assert lab.sh("storage", f"cat {tpg}/enable {tpg}/attrib/generate_node_acls").split() == [
        "1", "0"]

    # The saved config deleted (or never written): the next run of the finished command
    # writes it again without changing the live state.
    live_before = helper(lab, "exports")
    lab.sh("storage", "rm -f /etc/target/saveconfig.json")
    helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST1)
    assert helper(lab, "exports") == live_before
    assert saved_config(lab)["targets"][0]["wwn"] == iqn1

    # A backstore left over by an unexport that died after removing the target.
    helper(lab, "export", "--vg", VG, "--lv", "img-2", "--initiator", HOST1)
    iqn2 = f"iqn.2026-11.io.tm-iscsi:{VG}.img-2"
    lab.sh("storage", f"""/opt/tm_iscsi-venv/bin/python -W ignore - <<'PY'
from rtslib_fb import Target, FabricModule
Target(FabricModule("iscsi"), "{iqn2}", mode="lookup").delete()
PY""")
    assert [t["iqn"] for t in helper(lab, "exports")["targets"]] == [iqn1]
    assert "img-2" in refused(lab, "lv-remove", "--vg", VG, "--lv", "img-2")
    assert helper(lab, "unexport", "--vg", VG, "--lv", "img-2")["removed_target"] is False
    assert helper(lab, "lv-remove", "--vg", VG, "--lv", "img-2")["removed"] is True
    saved = saved_config(lab)
    assert [so["name"] for so in saved["storage_objects"]] == [f"{VG}.img-1"]

    # An export killed by SIGKILL at a random point, many times, then re-run: always converges.
    for delay in ("0.3", "0.5", "0.7", "0.9"):
        lab.sh("storage", f"""
            cd /tmp
            env PYTHONPATH=/opt/tm_iscsi /opt/tm_iscsi-venv/bin/python -m tm_iscsi.node export \
                --vg {VG} --lv img-1 --initiator {HOST2} >/dev/null 2>&1 &
            pid=$!
            sleep {delay}; kill -9 $pid 2>/dev/null || true; wait $pid || true""")
        helper(lab, "export", "--vg", VG, "--lv", "img-1", "--initiator", HOST2)
        assert helper(lab, "exports")["targets"][0]["initiators"] == [HOST1, HOST2]
        helper(lab, "unexport", "--vg", VG, "--lv", "img-1", "--initiator", HOST2)
    assert helper(lab, "exports") == live_before
    assert saved_config(lab)["targets"][0]["tpgs"][0]["node_acls"][0]["node_wwn"] == HOST1


def test_revert_makes_the_new_content_before_the_old_goes_and_converges(lab):
    make_vg(lab)
    helper(lab, "pool-ensure", "--vg", VG)
    old, new = pattern(8, seed=1), pattern(8, seed=2)
    helper(lab, "lv-create", "--vg", VG, "--lv", "img-5", "--size-mib", "8")
    helper(lab, "lv-write", "--vg", VG, "--lv", "img-5", input=old)
    helper(lab, "lv-snapshot", "--vg", VG, "--origin", "img-5", "--lv", "img-5-snap-0")

    def written_over():
        helper(lab, "lv-write", "--vg", VG, "--lv", "img-5", input=new)
        assert lv_sha(lab, "img-5") == sha(new)

    def reverted():
        assert lv_sha(lab, "img-5") == sha(old)
        names = [lv["lv"] for lv in helper(lab, "lv-list", "--vg", VG)["lvs"]]
        assert sorted(names) == ["img-5", "img-5-snap-0"], names

    written_over()
    out = helper(lab, "lv-revert", "--vg", VG, "--lv", "img-5", "--to", "img-5-snap-0",
                 "--tag", "tm_iscsi.kind=image")
    assert out["size_bytes"] == 8 * MIB
    reverted()
    assert "tm_iscsi.kind=image" in helper(lab, "lv-info", "--vg", VG, "--lv", "img-5")["tags"]

    # A refusal (a fill limit below the pool's fill) changes nothing: the content stays.
    written_over()
    assert "too full" in refused(lab, "lv-revert", "--vg", VG, "--lv", "img-5", "--to",
                                 "img-5-snap-0", "--max-fill", "1")
    assert lv_sha(lab, "img-5") == sha(new)
    assert "does not exist" in refused(lab, "lv-revert", "--vg", VG, "--lv", "img-5", "--to",
                                       "img-5-snap-9")
    assert lv_sha(lab, "img-5") == sha(new)

    # Stopped between the renames (the replacement made, the old content moved aside, the name
    # free): the next run restores, then reverts.
    lab.sh("storage", f"lvcreate -q -y --snapshot --setactivationskip n --addtag tm_iscsi "
                      f"-n img-5-next {VG}/img-5-snap-0 && lvrename -q {VG} img-5 img-5-prev")
    helper(lab, "lv-revert", "--vg", VG, "--lv", "img-5", "--to", "img-5-snap-0")
    reverted()

    # Killed at seeded points inside the command: the content is always one of the two, and
    # the next run converges.
    import random
    rng = random.Random(5)
    for _ in range(4):
        written_over()
        delay = rng.uniform(0.2, 3.0)
        lab.sh("storage", f"""
            env PYTHONPATH=/opt/tm_iscsi /opt/tm_iscsi-venv/bin/python -m tm_iscsi.node \
                lv-revert --vg {VG} --lv img-5 --to img-5-snap-0 >/dev/null 2>&1 &
            sleep {delay:.2f}; kill -9 $! 2>/dev/null; wait""", check=False)
        present = {lv["lv"] for lv in helper(lab, "lv-list", "--vg", VG)["lvs"]}
        holder = "img-5" if "img-5" in present else "img-5-prev"
        assert lv_sha(lab, holder) in (sha(old), sha(new)), (delay, present)
        helper(lab, "lv-revert", "--vg", VG, "--lv", "img-5", "--to", "img-5-snap-0")
        reverted()
