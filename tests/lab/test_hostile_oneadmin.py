"""A hostile oneadmin: everything sudo lets it run (`sudo -n tm-iscsi-node ...`, exactly what the
front-end runs) is tried against what is not tm_iscsi's, on the real kernel. Each attempt is
refused with one line, and the nodes are unchanged: the same LVs with the same tags, the same
LIO configuration, the same files and links, the foreign data never exported to a host."""
import hashlib

import pytest

VG = "vg-one-100"
DS = "/var/lib/one/datastores"
HOST2 = "iqn.2026-11.lab.tm-iscsi:host2"
FOREIGN = b"precious-bytes-of-someone-else " * 4096

STORAGE_STATE = r"""
lvs --noheadings -o vg_name,lv_name,lv_tags,lv_size 2>/dev/null | sort
vgs --noheadings -o vg_name 2>/dev/null | sort
/usr/sbin/tm-iscsi-node exports
sha256sum /etc/target/saveconfig.json 2>/dev/null || true
find /etc /usr/sbin /root -xdev \( -type f -o -type l \) -newer /etc/hostname \
     ! -path '/etc/lvm/archive/*' ! -path '/etc/lvm/backup/*' -printf '%p %s %l\n' | sort
"""
HOST_STATE = r"""
find /etc /root -xdev \( -type f -o -type l \) -newer /etc/hostname -printf '%p %s %l\n' | sort
find /var/lib/one/datastores -printf '%p %y %u %l\n' 2>/dev/null | sort
iscsiadm -m session 2>/dev/null || true
dmsetup ls 2>/dev/null | sort
"""


def as_oneadmin(lab, node, *helper_args, input=None):
    """What the front-end runs: ssh as oneadmin, the helper through its sudoers rule."""
    return lab.api.exec_(node, ["sudo", "-n", "tm-iscsi-node", *helper_args], input=input,
                         user="oneadmin")


def refused(lab, node, *helper_args, input=None):
    result = as_oneadmin(lab, node, *helper_args, input=input)
    lines = [line for line in result.stderr.decode(errors="replace").splitlines()
             if line.strip() and not line.startswith("INFO: ")]
    assert result.returncode != 0, (helper_args, result.stdout)
    assert len(lines) == 1, (helper_args, lines)
    assert result.stdout.strip() == b"", result.stdout
    assert "Traceback" not in result.stderr.decode(errors="replace")
    return lines[0]


@pytest.fixture
def storage(lab):
    """The datastore's VG with its pool and one tm_iscsi image, beside an LV that is not
    tm_iscsi's (same VG, no tag) and a VG of somebody else's on a loop device."""
    lab.sh("storage", f"pvcreate -q /dev/ubdb && vgcreate -q {VG} /dev/ubdb")
    assert as_oneadmin(lab, "storage", "pool-ensure", "--vg", VG).returncode == 0
    assert as_oneadmin(lab, "storage", "lv-create", "--vg", VG, "--lv", "img-1",
                       "--size-mib", "8").returncode == 0
    lab.sh("storage", f"""
        lvcreate -q -V 8M -T {VG}/tpool -n precious
        truncate -s 64M /root/other.img
        dev=$(losetup --find --show /root/other.img)
        pvcreate -q "$dev" && vgcreate -q othervg "$dev"
        lvcreate -q -L 8M -n precious2 othervg
        """)
    for lv in (f"{VG}/precious", "othervg/precious2"):
        lab.sh("storage", f"dd of=/dev/{lv} bs=1M oflag=direct conv=notrunc status=none",
               input=FOREIGN)
    yield
    lab.sh("storage", """
        vgchange -an othervg >/dev/null 2>&1; vgremove -ff -y othervg >/dev/null 2>&1
        for d in $(losetup -j /root/other.img -O NAME -n); do
            pvremove -ff -y "$d" >/dev/null 2>&1; losetup -d "$d"; done
        rm -f /root/other.img""", check=False)


def foreign_sha(lab, lv):
    return lab.sh("storage", f"head -c {len(FOREIGN)} /dev/{lv} | sha256sum | "
                             "cut -d' ' -f1").strip()


def test_the_storage_helper_does_the_driver_s_job_and_nothing_more(lab, storage):
    before = lab.sh("storage", STORAGE_STATE)
    attempts = {
        "othervg": [("lv-remove", "--vg", "othervg", "--lv", "precious2"),
                    ("lv-read", "--vg", "othervg", "--lv", "precious2"),
                    ("lv-info", "--vg", "othervg", "--lv", "precious2"),
                    ("export", "--vg", "othervg", "--lv", "precious2", "--initiator", HOST2)],
        "device paths": [("export", "--vg", "fd", "--lv", "0", "--initiator", HOST2),
                         ("export", "--vg", "cpu", "--lv", "0", "--initiator", HOST2),
                         ("export", "--vg", "mapper", "--lv", "vg--one--100-tpool_tdata",
                          "--initiator", HOST2)],
        "not tm_iscsi's": [("lv-remove", "--vg", VG, "--lv", "precious"),
                           ("lv-read", "--vg", VG, "--lv", "precious"),
                           ("lv-resize", "--vg", VG, "--lv", "precious", "--size-mib", "64"),
                           ("lv-tag", "--vg", VG, "--lv", "precious", "--add", "tm_iscsi"),
                           ("lv-mkfs", "--vg", VG, "--lv", "precious", "--fs", "ext4"),
                           ("lv-snapshot", "--vg", VG, "--origin", "precious", "--lv", "img-9"),
                           ("lv-copy", "--vg", VG, "--src", "precious", "--dst", "img-1"),
                           ("lv-copy", "--vg", VG, "--src", "img-1", "--dst", "precious"),
                           ("export", "--vg", VG, "--lv", "precious", "--initiator", HOST2),
                           ("export", "--vg", VG, "--lv", "tpool", "--initiator", HOST2)],
        "names": [("lv-create", "--vg", VG, "--lv", "evil", "--size-mib", "8"),
                  ("lv-snapshot", "--vg", VG, "--origin", "img-1", "--lv", "root"),
                  ("lv-tag", "--vg", VG, "--lv", "img-1", "--delete", "tm_iscsi")],
    }
    for group, cases in attempts.items():
        for args in cases:
            line = refused(lab, "storage", *args)
            assert line, (group, args)
    write = refused(lab, "storage", "lv-write", "--vg", VG, "--lv", "precious",
                    input=b"\0" * (1 << 20))
    assert "not tm_iscsi's" in write
    assert lab.sh("storage", STORAGE_STATE) == before
    digest = hashlib.sha256(FOREIGN).hexdigest()
    assert foreign_sha(lab, f"{VG}/precious") == digest
    assert foreign_sha(lab, "othervg/precious2") == digest
    # Nothing of it reached LIO: no host can log in to the foreign bytes.
    exports = lab.node_helper("storage", "exports")["targets"]
    assert not any("precious" in t["iqn"] or "othervg" in t["iqn"] for t in exports), exports
    discovered = lab.sh("host2", "iscsiadm -m discovery -t sendtargets -p storage 2>/dev/null "
                                 "|| true")
    assert "precious" not in discovered and "othervg" not in discovered


def test_the_host_helper_writes_links_and_packs_only_inside_the_datastores(lab):
    # A VM directory made the driver's way, then links oneadmin planted in its own directory.
    assert as_oneadmin(lab, "host1", "file-put", "--path", f"{DS}/0/41/ok",
                       input=b"ok\n").returncode == 0
    lab.api.exec_("host1", ["sh", "-c", f"ln -s /etc {DS}/0/42 && ln -s /root {DS}/0/41/sub"],
                  user="oneadmin")
    before = lab.sh("host1", HOST_STATE)
    etc_before = lab.sh("host1", "ls -la /etc | sha256sum")
    tar = lab.sh("host1", "cd /tmp && rm -rf t && mkdir t && echo evil > t/passwd && "
                          "tar -C t -cf - . | base64 -w0").strip()
    import base64
    stream = base64.b64decode(tar)
    lines = [
        refused(lab, "host1", "dir-unpack", "--path", f"{DS}/0/42", input=stream),
        refused(lab, "host1", "dir-pack", "--path", f"{DS}/0/42"),
        refused(lab, "host1", "file-put", "--path", f"{DS}/0/42/passwd", input=b"evil\n"),
        refused(lab, "host1", "file-put", "--path", f"{DS}/0/41/sub/x", input=b"evil\n"),
        refused(lab, "host1", "file-put", "--path", "/etc/tm-iscsi-evil", input=b"evil\n"),
        refused(lab, "host1", "file-put", "--path", f"{DS}/0/41/../../../../etc/x",
                input=b"evil\n"),
        refused(lab, "host1", "attach", "--portal", "storage", "--iqn",
                "iqn.2026-11.io.tm-iscsi:vg-one-100.img-1", "--serial",
                "00000000-0000-0000-0000-000000000000", "--link", "/etc/tm-iscsi-link"),
        refused(lab, "host1", "attach", "--portal", "storage", "--iqn",
                "iqn.2026-11.io.tm-iscsi:vg-one-100.img-1", "--serial",
                "00000000-0000-0000-0000-000000000000", "--link", f"{DS}/0/42/disk.0"),
        refused(lab, "host1", "cache-init", "--device", "/dev/ubdb", "--vg", "othervg"),
    ]
    assert all(lines), lines
    assert lab.sh("host1", HOST_STATE) == before
    assert lab.sh("host1", "ls -la /etc | sha256sum") == etc_before
    assert lab.sh("host1", "test ! -e /etc/tm-iscsi-evil && test ! -e /etc/tm-iscsi-link && "
                           "grep -c evil /etc/passwd || true").strip() in ("0", "")
    # Removing a planted link removes the link only, never what it points at.
    assert as_oneadmin(lab, "host1", "path-remove", "--path", f"{DS}/0/42").returncode == 0
    assert lab.sh("host1", f"test -d /etc && test ! -e {DS}/0/42 && echo ok").strip() == "ok"
