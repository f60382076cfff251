"""install.sh on real nodes: the storage node and a host get their VG, LVM filter, helper and
settings; a second run changes nothing; a dry run changes nothing; a disk that holds data is
refused. The nodes reach no package index, so packages are skipped and tm_iscsi comes as a
wheel, with files rendered on the machine (the nodes have no Jinja2): the offline way an
administrator installs a node."""
import json

import pytest

from lab import config, ship

SHIP = "install-test"
INSTALL = ship.INSTALL
# What install.sh may write on a node; saved before each test and put back after it, so the
# tests that follow find the nodes as the lab made them.
TOUCHED = ("etc/lvm/lvmlocal.conf", "etc/iscsi/iscsid.conf", "etc/iscsi/initiatorname.iscsi",
           "etc/sudoers.d", "etc/tm_iscsi", "etc/systemd/system/tm-iscsi-activate.service",
           "etc/systemd/system/tm-iscsi-cache-warm.service",
           "etc/systemd/system/tm-iscsi-cache-warm.timer", "etc/cron.d/tm-iscsi-cache-warm",
           "usr/sbin/tm-iscsi-node", "etc/rtslib-fb-target")
# A node's state as install.sh could change it: files, users, PVs/VGs/LVs, the data disk.
STATE = r"""
find /etc /usr/sbin /opt/tm_iscsi-venv -xdev \( -type f -o -type l \) \
     ! -path '/etc/lvm/archive/*' ! -path '/etc/lvm/backup/*' \
     -printf '%p %m %u %s %T@ %l\n' | sort | sha256sum
pvs --noheadings -o pv_name,vg_name 2>/dev/null | sort
lvs --noheadings -o vg_name,lv_name,segtype 2>/dev/null | sort
blkid -p -o export /dev/ubdb || true
"""


@pytest.fixture(scope="module")
def shipped():
    """Files rendered on the machine and a wheel of this checkout, where the nodes see them."""
    yield ship.ship(SHIP)
    ship.unship(SHIP)


@pytest.fixture
def restore(lab):
    saved = {}

    def save(node):
        existing = lab.sh(node, "cd / && for p in " + " ".join(TOUCHED) +
                          "; do [ -e \"$p\" ] && echo \"$p\"; done; true").split()
        lab.sh(node, f"cd / && tar -czf /root/tm-iscsi-pre-install.tgz {' '.join(existing)}"
               if existing else "rm -f /root/tm-iscsi-pre-install.tgz")
        had_user = lab.run(node, ["id", "oneadmin"]).returncode == 0
        had_home = lab.run(node, ["test", "-e", "/var/lib/one"]).returncode == 0
        saved[node] = (had_user, had_home)

    yield save
    for node, (had_user, had_home) in saved.items():
        lab.sh(node, f"""
            cd / && rm -rf {' '.join(TOUCHED)}
            [ -f /root/tm-iscsi-pre-install.tgz ] && tar -xzf /root/tm-iscsi-pre-install.tgz
            rm -f /root/tm-iscsi-pre-install.tgz
            /opt/tm_iscsi-venv/bin/python -m pip uninstall -q -y tm_iscsi >/dev/null 2>&1 || true
            rm -f /opt/tm_iscsi-venv/.tm_iscsi-source
            """)
        if not had_user and lab.run(node, ["id", "oneadmin"]).returncode == 0:
            lab.sh(node, "userdel -r oneadmin 2>/dev/null || userdel oneadmin" if not had_home
                   else "userdel oneadmin")


def install(lab, node, args, check=True):
    result = lab.sh(node, f"{INSTALL} {args}", check=False, timeout=600)
    out, err = result.stdout.decode(), result.stderr.decode()
    if check:
        assert result.returncode == 0, f"{node}: install.sh {args}\n{out}\n{err}"
    return result.returncode, out, err


def state(lab, node):
    return lab.sh(node, STATE)


@pytest.mark.parametrize("node, role, vg", [
    ("storage", "storage", "vg-one-100"),
    ("host1", "host", "vg-tm-iscsi-cache"),
])
def test_install_twice_and_the_second_run_changes_nothing(lab, shipped, restore, node, role, vg):
    restore(node)
    args = f"--role {role} --device /dev/ubdb {shipped}"

    before = state(lab, node)
    _, out, _ = install(lab, node, f"{args} --dry-run")
    assert state(lab, node) == before, "the dry run changed the node"
    assert f"would: create the {'image' if role == 'storage' else 'cache'} VG {vg} on /dev/ubdb" \
        in out
    assert "would: update the tm_iscsi block in /etc/lvm/lvmlocal.conf" in out
    assert "nothing was changed" in out

    _, first, _ = install(lab, node, args)
    assert "change(s) made" in first
    after_first = state(lab, node)

    # The node now has what the front-end needs from it.
    assert lab.sh(node, f"vgs --noheadings -o vg_name {vg}").strip() == vg
    filt = lab.sh(node, "lvmconfig devices/global_filter devices/scan_lvs")
    assert 'global_filter=["a|^/dev/ubdb$|","r|.*|"]' in filt and "scan_lvs=0" in filt
    assert lab.sh(node, "stat -c '%a %U' /etc/sudoers.d/tm_iscsi /usr/sbin/tm-iscsi-node") == \
        "440 root\n755 root\n"
    if role == "storage":
        status = json.loads(lab.sh(node, "/usr/sbin/tm-iscsi-node pool-status --vg vg-one-100 "
                                         "--pool tpool"))
        assert status["data_percent"] == 0
        assert lab.run(node, ["id", "oneadmin"]).returncode == 0
    else:
        # The lab's initiator name is kept: ACLs on the storage node name the host by it.
        assert lab.sh(node, "cat /etc/iscsi/initiatorname.iscsi").strip() == \
            f"InitiatorName={config.node(node).initiator_iqn}"
        # The helper runs from the virtualenv install.sh filled, not from the checkout.
        assert json.loads(lab.sh(node, "cd / && /usr/sbin/tm-iscsi-node initiator")) == {
            "iqn": config.node(node).initiator_iqn}
        assert lab.sh(node, "/opt/tm_iscsi-venv/bin/python -I -c 'import tm_iscsi; "
                            "print(tm_iscsi.__file__)'").startswith("/opt/tm_iscsi-venv/")
        settings = lab.sh(node, "iscsiadm -m node -o new -T iqn.2026-11.test:probe "
                                "-p 127.0.0.1 >/dev/null && iscsiadm -m node -T "
                                "iqn.2026-11.test:probe -p 127.0.0.1 | grep -E "
                                "'^node.(startup|session.timeo.replacement_timeout) ';"
                                "iscsiadm -m node -o delete -T iqn.2026-11.test:probe "
                                "-p 127.0.0.1")
        assert "node.startup = manual" in settings
        assert "node.session.timeo.replacement_timeout = 300" in settings
        assert lab.run(node, ["test", "-x", "/etc/tm_iscsi/boot.d/50-tm-iscsi-activate"]
                       ).returncode == 0
        # No systemd on the lab nodes: the warm-up goes to cron, and its command line works.
        cron = [line for line in lab.sh(node, "cat /etc/cron.d/tm-iscsi-cache-warm").splitlines()
                if line and not line.startswith("#")]
        assert len(cron) == 1 and cron[0].split()[5] == "root", cron
        command = cron[0].split(None, 6)[6].split(">")[0]
        assert "cache-warm" in command
        warmed = json.loads(lab.sh(node, f"cd / && {command}"))
        assert warmed["caches"] == [] and warmed["complete"] is True

    _, second, _ = install(lab, node, args)
    assert "no change: everything was already in place" in second, second
    assert "   would: " not in second and "   change: " not in second
    assert state(lab, node) == after_first


def test_a_disk_that_holds_data_is_refused(lab, shipped, restore):
    restore("host2")
    lab.sh("host2", "mke2fs -q -F -t ext4 -E nodiscard /dev/ubdb")
    before = state(lab, "host2")
    for dry in ("--dry-run", ""):
        rc, out, err = install(lab, "host2", f"--role host --device /dev/ubdb {shipped} {dry}",
                               check=False)
        assert rc == 1
        assert "refusing: /dev/ubdb holds a ext4 signature" in err, out + err
        assert "   change: " not in out
    assert state(lab, "host2") == before
    assert lab.sh("host2", "blkid -p -o value -s TYPE /dev/ubdb").strip() == "ext4"

    # A PV of some other VG is someone's data too.
    restore("storage")
    lab.sh("storage", "pvcreate -q /dev/ubdb && vgcreate -q other-vg /dev/ubdb")
    before = state(lab, "storage")
    rc, _, err = install(lab, "storage", f"--role storage --device /dev/ubdb {shipped}",
                         check=False)
    assert rc == 1 and "is a PV of the VG other-vg" in err, err
    assert state(lab, "storage") == before


def test_the_lvm_filter_never_hides_a_vg_the_node_uses(lab, shipped, restore):
    """A VG of the node's own (the root VG of a real server) that the site file forgot would
    vanish behind the filter at the next boot: install.sh refuses instead, before any change."""
    restore("storage")
    lab.sh("storage", """
        truncate -s 64M /root/os-disk.img
        dev=$(losetup --find --show /root/os-disk.img)
        pvcreate -q "$dev" && vgcreate -q osvg "$dev"
        echo "$dev" > /root/os-disk.dev
        """)
    try:
        loop = lab.sh("storage", "cat /root/os-disk.dev").strip()
        before = state(lab, "storage")
        rc, out, err = install(lab, "storage", f"--role storage --device /dev/ubdb {shipped}",
                               check=False)
        assert rc == 1, out
        assert f"would hide PVs this node uses now: {loop} (VG osvg)" in err, err
        assert "system_devices" in err
        assert state(lab, "storage") == before
        assert lab.sh("storage", "vgs --noheadings -o vg_name osvg").strip() == "osvg"
    finally:
        lab.sh("storage", """
            vgremove -q -f osvg >/dev/null 2>&1 || true
            dev=$(cat /root/os-disk.dev 2>/dev/null || true)
            [ -n "$dev" ] && pvremove -q -ff -y "$dev" >/dev/null 2>&1 || true
            [ -n "$dev" ] && losetup -d "$dev" || true
            rm -f /root/os-disk.img /root/os-disk.dev
            """)
