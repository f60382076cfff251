"""install.sh against a scratch root (--root): a dry run says what it would change and changes
nothing, a real run is idempotent, and a disk that holds data is refused."""
import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "install.sh"

SITE = """\
[cloud]
opennebula = 7.4
oneadmin = root
frontend = frontend
[storage]
host = storage
vg = vg-one-100
devices = /dev/ubdb
[host]
devices = /dev/ubdb
cache_vg = vg-cache
"""

ONED = """\
PORT = 2633
TM_MAD = [
    EXECUTABLE = "one_tm",
    ARGUMENTS = "-t 15 -d dummy,lvm,shared,ssh,ceph"
]
DATASTORE_MAD = [
    EXECUTABLE = "one_datastore",
    ARGUMENTS  = "-t 15 -d dummy,fs,lvm,ceph -s shared,ssh,ceph"
]
INHERIT_DATASTORE_ATTR = "ISCSI_HOST"
TM_MAD_CONF = [ NAME = "ceph", LN_TARGET = "NONE", CLONE_TARGET = "SELF", SHARED = "YES" ]
"""

ISCSID = """\
# iscsid.conf as the package ships it (abridged)
node.startup = automatic
node.session.timeo.replacement_timeout = 120
"""

LVMLOCAL = """\
local {
\t# system_id = ""
}
"""


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for d in ("var/lib/one/remotes/im/kvm-probes.d/host/system", "etc/one", "etc/lvm",
              "etc/iscsi"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (r / "etc/one/defaultrc").write_text("PRIORITY=19\n")
    (r / "etc/one/oned.conf").write_text(ONED)
    (r / "etc/iscsi/iscsid.conf").write_text(ISCSID)
    (r / "etc/lvm/lvmlocal.conf").write_text(LVMLOCAL)
    return r


@pytest.fixture
def site(tmp_path):
    path = tmp_path / "site.ini"
    path.write_text(SITE)
    return path


def run(*args, env=None, check_rc=0):
    full_env = dict(os.environ, TM_ISCSI_NO_PACKAGES="1")
    full_env.update(env or {})
    result = subprocess.run(["bash", str(INSTALL), *map(str, args)], capture_output=True,
                            text=True, env=full_env, timeout=300)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stdout + result.stderr
    return result


def snapshot(root):
    """Everything about every file under root that a change would touch."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_mtime_ns)
            if p.is_symlink():
                entry += (os.readlink(p),)
            elif p.is_file():
                entry += (hashlib.sha256(p.read_bytes()).hexdigest(),)
            state[str(p.relative_to(root))] = entry
    return state


def would(output):
    return [l.strip()[len("would: "):] for l in output.splitlines()
            if l.strip().startswith("would: ")]


# -- dry runs ----------------------------------------------------------------------------------

def test_frontend_dry_run_plans_everything_and_changes_nothing(root, site):
    before = snapshot(root)
    out = run("--role", "frontend", "--site", site, "--root", root, "--dry-run").stdout
    assert snapshot(root) == before
    planned = would(out)
    for expected in ("create the virtualenv /opt/tm_iscsi-venv",
                     "install tm_iscsi into /opt/tm_iscsi-venv (from this checkout)",
                     "write /etc/one/tm_iscsi.conf (mode 640, root:root)",
                     "update the tm_iscsi block in /etc/one/defaultrc",
                     "write /etc/one/tm_iscsi/iscsi_lvm.onecfg (mode 644, root:root)",
                     # the template holds the CHAP secret: its owner's alone
                     "write /etc/one/tm_iscsi/image.tpl (mode 600, root:root)"):
        assert expected in planned, out
    assert any(p.startswith("install /var/lib/one/remotes/tm/iscsi_lvm") for p in planned)
    assert any(p.startswith("install /var/lib/one/remotes/datastore/iscsi_lvm") for p in planned)
    # The file diff is shown, and the virtualenv command is one a reader can run.
    assert "+TM_ISCSI_PYTHON=/opt/tm_iscsi-venv/bin/python" in out
    assert re.search(r"\$ python3 -m venv --system-site-packages \S*/opt/tm_iscsi-venv", out)
    # oned.conf is never edited without --apply-oned: the patch and the way to apply it are shown.
    assert "oned.conf does not register iscsi_lvm yet" in out
    assert "onecfg patch --format line /etc/one/tm_iscsi/iscsi_lvm.onecfg" in out
    # ... built on this oned.conf's own lists.
    assert ('/etc/one/oned.conf set TM_MAD/ARGUMENTS '
            '"\\"-t 15 -d dummy,lvm,shared,ssh,ceph,iscsi_lvm\\""') in out
    assert f"dry run: {len(planned)} change(s) would be made; nothing was changed" in out


def test_storage_dry_run(root, site):
    before = snapshot(root)
    out = run("--role", "storage", "--site", site, "--root", root, "--dry-run").stdout
    assert snapshot(root) == before
    planned = would(out)
    for expected in ("write /usr/sbin/tm-iscsi-node (mode 755, root:root)",
                     "write /etc/tm_iscsi/node.conf (mode 644, root:root)",
                     "write /etc/sudoers.d/tm_iscsi (mode 440, root:root)",
                     "update the tm_iscsi block in /etc/lvm/lvmlocal.conf"):
        assert expected in planned, out
    assert '+    global_filter = [ "a|^/dev/ubdb$|", "r|.*|" ]' in out
    assert "VG vg-one-100" in out
    assert "nothing was changed" in out


def test_host_dry_run(root, site):
    before = snapshot(root)
    out = run("--role", "host", "--site", site, "--root", root, "--dry-run").stdout
    assert snapshot(root) == before
    planned = would(out)
    assert any(re.match(r"set the initiator name iqn\.2005-03\.org\.open-iscsi:\S+ ", p)
               for p in planned), out
    assert "update the tm_iscsi block in /etc/iscsi/iscsid.conf" in planned
    assert "+node.startup = manual" in out
    assert ("write /etc/systemd/system/tm-iscsi-activate.service (mode 644, root:root)"
            in planned)
    for unit in ("service", "timer"):
        assert (f"write /etc/systemd/system/tm-iscsi-cache-warm.{unit} (mode 644, root:root)"
                in planned)
    assert "VG vg-cache" in out


def test_all_roles_on_one_machine_dry_run(root, site):
    before = snapshot(root)
    out = run("--role", "frontend,storage", "--role", "host", "--site", site, "--root", root,
              "--dry-run").stdout
    assert snapshot(root) == before
    assert "roles frontend storage host" in out
    # One filter for a machine that is both: its storage and its cache disks.
    assert "ROLES=storage,host" in out


def test_dry_run_shows_the_onecfg_call_with_apply_oned(root, site, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "onecfg").write_text("#!/bin/sh\necho onecfg must not run in a dry run >&2\nexit 9\n")
    (fake / "onecfg").chmod(0o755)
    before = snapshot(root)
    out = run("--role", "frontend", "--site", site, "--root", root, "--dry-run", "--apply-oned",
              env={"PATH": f"{fake}:{os.environ['PATH']}"}).stdout
    assert snapshot(root) == before
    assert "register iscsi_lvm in oned.conf with onecfg patch" in out
    assert 'ins TM_MAD_CONF/"iscsi_lvm"/NAME' in out


def test_apply_oned_without_onecfg_is_refused(root, site, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if not (Path(p) / "onecfg").exists())
    result = run("--role", "frontend", "--site", site, "--root", root, "--dry-run",
                 "--apply-oned", env={"PATH": path}, check_rc=1)
    assert "needs onecfg" in result.stderr


# -- real runs into the scratch root ----------------------------------------------------------

def test_frontend_install_is_idempotent(root, site):
    first = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python").stdout
    assert re.search(r"^\d+ change\(s\) made$", first, re.M), first
    remotes = root / "var/lib/one/remotes"
    for kind in ("tm", "datastore"):
        action = remotes / kind / "iscsi_lvm" / "monitor"
        assert action.is_file() and os.access(action, os.X_OK)
    # The host probe, where oned's KVM system probes are (no qemu-probes.d here: none made).
    probe = remotes / "im/kvm-probes.d/host/system/tm_iscsi-cache.sh"
    assert os.access(probe, os.X_OK)
    assert "-m tm_iscsi.hostfacts --helper /usr/sbin/tm-iscsi-node" in probe.read_text()
    assert not (remotes / "im/qemu-probes.d").exists()
    assert "onehost sync --force" in first
    # onecfg (upgrade, patch) refuses to run when /etc/one or the remotes tree holds a symlink
    # (OpenNebula's src/onecfg/lib/transaction.rb, check_symlinks): install.sh puts none there.
    for top in ("etc/one", "var/lib/one/remotes"):
        links = [p for p in (root / top).rglob("*") if p.is_symlink()]
        assert links == [], links
    assert (root / "etc/one/defaultrc").read_text().startswith("PRIORITY=19\n# BEGIN tm_iscsi")
    conf = (root / "etc/one/tm_iscsi.conf").read_text()
    assert "TM_ISCSI_NODE_CMD=sudo -n tm-iscsi-node" in conf
    assert stat.S_IMODE((root / "etc/one/tm_iscsi.conf").stat().st_mode) == 0o640
    # oned.conf itself is untouched.
    assert (root / "etc/one/oned.conf").read_text() == ONED

    before = snapshot(root)
    second = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python").stdout
    assert "no change: everything was already in place" in second
    assert snapshot(root) == before


def test_frontend_sees_a_registered_oned_conf(root, site, tmp_path):
    rendered = tmp_path / "r"
    subprocess.run(["python3", "-m", "tm_iscsi.config_render", "--site", str(site), "--out",
                    str(rendered), "--oned-conf", str(root / "etc/one/oned.conf")], cwd=REPO,
                   check=True, capture_output=True)
    snippet = (rendered / "oned/iscsi_lvm.conf").read_text()
    registered = re.sub(r"TM_MAD = \[.*?\]\nDATASTORE_MAD = \[.*?\]\n", "", ONED, flags=re.S)
    (root / "etc/one/oned.conf").write_text(registered + snippet)
    out = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
              "--dry-run").stdout
    assert "ok: oned.conf registers iscsi_lvm" in out


def test_node_install_is_idempotent_and_keeps_what_it_does_not_own(root, site):
    # An older tm_iscsi block is replaced, not doubled; the package's lines stay.
    (root / "etc/iscsi/iscsid.conf").write_text(
        ISCSID + "# BEGIN tm_iscsi (managed by install.sh: change the site file and re-run it)\n"
        "node.startup = onboot\n# END tm_iscsi\n")
    first = run("--role", "storage,host", "--site", site, "--root", root, "--skip",
                "python").stdout
    assert "change(s) made" in first
    iscsid = (root / "etc/iscsi/iscsid.conf").read_text()
    assert iscsid.startswith(ISCSID)
    assert iscsid.count("# BEGIN tm_iscsi") == 1 and "onboot" not in iscsid
    assert iscsid.rstrip().endswith("# END tm_iscsi")
    lvmlocal = (root / "etc/lvm/lvmlocal.conf").read_text()
    assert lvmlocal.startswith(LVMLOCAL) and "scan_lvs = 0" in lvmlocal
    name = (root / "etc/iscsi/initiatorname.iscsi").read_text()
    assert re.match(r"^InitiatorName=iqn\.2005-03\.org\.open-iscsi:\S+\n$", name)
    sudoers = root / "etc/sudoers.d/tm_iscsi"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    if shutil.which("visudo"):
        subprocess.run(["visudo", "-cf", str(sudoers)], check=True, capture_output=True)
    helper = root / "usr/sbin/tm-iscsi-node"
    assert os.access(helper, os.X_OK)
    assert (root / "etc/tm_iscsi/node.conf").read_text().count("ROLES=storage,host") == 1

    before = snapshot(root)
    second = run("--role", "storage,host", "--site", site, "--root", root, "--skip",
                 "python").stdout
    assert "no change: everything was already in place" in second
    assert f"keeps its initiator name {name.split('=', 1)[1].strip()}" in second
    assert snapshot(root) == before


def test_a_devices_section_of_the_admin_is_not_overridden(root, site):
    (root / "etc/lvm/lvmlocal.conf").write_text(LVMLOCAL + "devices {\n  filter = [ ]\n}\n")
    before = snapshot(root)
    result = run("--role", "host", "--site", site, "--root", root, "--dry-run", check_rc=1)
    assert "refusing" in result.stderr and "lvmlocal.conf" in result.stderr
    assert snapshot(root) == before


# -- disks that hold data ----------------------------------------------------------------------

def _disk_image(tmp_path, name):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    return path


@pytest.mark.skipif(not shutil.which("mke2fs"), reason="e2fsprogs not installed")
def test_a_disk_with_a_file_system_is_refused(root, site, tmp_path):
    disk = _disk_image(tmp_path, "ext4.img")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(disk)], check=True)
    content = hashlib.sha256(disk.read_bytes()).hexdigest()
    before = snapshot(root)
    for role in ("storage", "host"):
        for dry in ([], ["--dry-run"]):
            result = run("--role", role, "--device", disk, "--site", site, "--root", root,
                         *dry, check_rc=1)
            assert re.search(r"refusing: .*ext4\.img holds a ext4 signature", result.stderr)
            assert result.stderr.count("\n") == 1, result.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == content
    # Refused before the first change: nothing under the root moved either.
    assert snapshot(root) == before


@pytest.mark.skipif(not shutil.which("sfdisk"), reason="sfdisk not installed")
def test_a_disk_with_a_partition_table_is_refused(root, site, tmp_path):
    disk = _disk_image(tmp_path, "gpt.img")
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: gpt\n", text=True, check=True,
                   capture_output=True)
    result = run("--role", "storage", "--device", disk, "--site", site, "--root", root,
                 "--dry-run", check_rc=1)
    assert "holds a partition table (gpt)" in result.stderr


def test_a_blank_file_is_not_a_disk(root, site, tmp_path):
    disk = _disk_image(tmp_path, "blank.img")
    result = run("--role", "storage", "--device", disk, "--site", site, "--root", root,
                 "--dry-run", check_rc=1)
    assert "is not a block device" in result.stderr


# -- usage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--role", "hypervisor"], "unknown role 'hypervisor'"),
    (["--role", "host"], "--site FILE is required"),
    (["--site", "x.ini"], "name at least one --role"),
    (["--role", "host", "--site", "x.ini", "--frobnicate"], "unknown option: --frobnicate"),
    (["--role", "host", "--site", "x.ini", "--skip", "everything"], "unknown step"),
    (["--role", "host", "--site", "x.ini", "--cache-device", "/dev/x"], "both storage and host"),
])
def test_usage_errors(args, message):
    result = run(*args, check_rc=1)
    assert message in result.stderr


def test_a_broken_site_file_stops_before_any_change(root, tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text(SITE.replace("devices = /dev/ubdb", "devices = /dev/ubdb|/dev/sda", 1))
    before = snapshot(root)
    result = run("--role", "storage", "--site", bad, "--root", root, check_rc=1)
    assert "[storage] devices" in result.stderr
    assert snapshot(root) == before


def test_help():
    result = run("--help")
    assert "--dry-run" in result.stdout and "--apply-oned" in result.stdout


# A stand-in for OpenNebula's onecfg: applies a line-format patch the way `onecfg patch` does
# (set replaces, ins adds what is missing, a repeated section is found and created by its NAME).
FAKE_ONECFG = """\
#!/usr/bin/env python3
import sys
sys.path.insert(0, {repo!r})
from tm_iscsi import config_render as cr

args = sys.argv[1:]
assert args.pop(0) == "patch", args
prefix = ""
while args[0].startswith("--"):
    option = args.pop(0)
    value = args.pop(0)
    if option == "--prefix":
        prefix = value
changes = cr.parse_onecfg(open(args[0]).read())
path = prefix + "/etc/one/oned.conf"
attrs = cr.parse_oned(open(path).read())
for filename, command, elements, value in changes:
    value = value[1:-1]
    if len(elements) == 2:
        section = next(a for a in attrs if a.name == elements[0])
        section.pairs = [p for p in section.pairs if p[0] != elements[1]] + [
            (elements[1], value, True)]
    elif len(elements) == 3:
        name = elements[1].strip('"')
        section = next((a for a in attrs if a.name == elements[0] and a.get("NAME") == name),
                       None)
        if section is None:
            section = cr.Attr(elements[0], None, 0, [])
            attrs.append(section)
        if section.get(elements[2]) is None:
            section.pairs.append((elements[2], value, True))
    elif value not in [a.value for a in attrs if a.name == elements[0]]:
        attrs.append(cr.Attr(elements[0], value, 0))
with open(path, "w") as f:
    for a in attrs:
        if a.pairs is None:
            f.write('%s = "%s"\\n' % (a.name, a.value))
        else:
            f.write("%s = [\\n%s\\n]\\n" % (a.name, ",\\n".join(
                '  %s = "%s"' % (k, v) for k, v, _ in a.pairs)))
"""


def test_apply_oned_registers_through_onecfg_once(root, site, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "onecfg").write_text(FAKE_ONECFG.format(repo=str(REPO)))
    (fake / "onecfg").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    first = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
                "--apply-oned", env=env).stdout
    assert "change: register iscsi_lvm in oned.conf with onecfg patch" in first, first
    assert "to do: restart oned" in first
    backups = list((root / "etc/one").glob("oned.conf.tm_iscsi-*"))
    assert len(backups) == 1 and backups[0].read_text() == ONED
    check = subprocess.run(["python3", "-m", "tm_iscsi.config_render", "check-oned",
                            str(root / "etc/one/oned.conf")], cwd=REPO, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr

    before = snapshot(root)
    second = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
                 "--apply-oned", env=env).stdout
    assert "ok: oned.conf registers iscsi_lvm" in second
    assert "no change: everything was already in place" in second
    assert snapshot(root) == before


# -- refusals before the first change, admin tools, uninstall ---------------------------------

def test_a_front_end_without_remotes_is_refused_before_any_change(root, site):
    shutil.rmtree(root / "var/lib/one/remotes")
    before = snapshot(root)
    for extra in (("--dry-run",), ()):
        result = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
                     *extra, check_rc=1)
        assert "no /var/lib/one/remotes" in result.stderr
        assert "change:" not in result.stdout and "would:" not in result.stdout
    assert snapshot(root) == before


def test_a_datastore_location_other_than_oned_s_is_refused(root, site):
    (root / "etc/one/oned.conf").write_text(ONED + 'DATASTORE_LOCATION = "/srv/one/datastores"\n')
    before = snapshot(root)
    result = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
                 check_rc=1)
    assert "DATASTORE_LOCATION" in result.stderr and "/srv/one/datastores" in result.stderr
    assert snapshot(root) == before
    site.write_text(SITE.replace("frontend = frontend\n", "frontend = frontend\n"
                                 "datastore_location = /srv/one/datastores\n"))
    run("--role", "frontend", "--site", site, "--root", root, "--skip", "python")


def test_a_self_contained_opennebula_is_installed_under_its_location(tmp_path, site):
    """ONE_LOCATION: remotes in var/remotes, configuration in etc, the driver told where its
    tm_iscsi.conf is."""
    root = tmp_path / "root"
    one = "/opt/one"
    for d in ("opt/one/var/remotes", "opt/one/etc"):
        (root / d).mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "opt/one/etc/oned.conf").write_text(ONED)
    # Its oned keeps datastores in <ONE_LOCATION>/var/datastores: the site file must say so.
    result = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
                 "--one-location", one, check_rc=1)
    assert "set [cloud] datastore_location = /opt/one/var/datastores" in result.stderr
    site.write_text(SITE.replace("frontend = frontend\n", "frontend = frontend\n"
                                 "datastore_location = /opt/one/var/datastores\n"))
    run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
        "--one-location", one)
    assert (root / "opt/one/var/remotes/tm/iscsi_lvm/clone").is_file()
    assert (root / "opt/one/etc/tm_iscsi.conf").is_file()
    assert "TM_ISCSI_CONF=/opt/one/etc/tm_iscsi.conf" in (root / "opt/one/etc/defaultrc").read_text()
    assert not (root / "var/lib/one").exists()


def test_the_admin_tools_are_linked_on_path(root, site):
    run("--role", "frontend", "--site", site, "--root", root, "--skip", "python")
    for tool in ("tm-iscsi", "tm-iscsi-hook", "tm-iscsi-config"):
        link = root / "usr/local/bin" / tool
        assert link.is_symlink() and os.readlink(link) == f"/opt/tm_iscsi-venv/bin/{tool}"


def test_uninstall_of_the_front_end_removes_what_install_put_there(root, site):
    pristine = snapshot(root)
    run("--role", "frontend", "--site", site, "--root", root, "--skip", "python")
    dry = run("--role", "frontend", "--site", site, "--root", root, "--uninstall", "--dry-run")
    assert "would: remove /var/lib/one/remotes/tm/iscsi_lvm" in dry.stdout
    assert "would: remove /var/lib/one/remotes/im/kvm-probes.d/host/system/tm_iscsi-cache.sh" \
        in dry.stdout
    assert "would: remove the tm_iscsi block from /etc/one/defaultrc" in dry.stdout
    installed = snapshot(root)
    out = run("--role", "frontend", "--site", site, "--root", root, "--uninstall").stdout
    assert "data (VGs, LVs, images) kept" in out
    left = {k for k in snapshot(root) if k not in pristine}
    # What stays: the empty folders install made (tm/, datastore/, usr/local/bin).
    assert all((root / k).is_dir() and not any((root / k).iterdir()) or (root / k).is_dir()
               for k in left), left
    assert not any("iscsi_lvm" in k or "tm_iscsi" in k or "tm-iscsi" in k for k in left), left
    assert (root / "etc/one/defaultrc").read_text() == "PRIORITY=19\n"
    assert installed != snapshot(root)
    again = run("--role", "frontend", "--site", site, "--root", root, "--uninstall").stdout
    assert "no change: nothing of tm_iscsi was left" in again


def test_uninstall_of_a_node_removes_helper_sudoers_and_blocks(root, site):
    run("--role", "host", "--site", site, "--root", root, "--skip", "python")
    assert (root / "etc/sudoers.d/tm_iscsi").exists()
    out = run("--role", "host", "--site", site, "--root", root, "--uninstall").stdout
    for gone in ("usr/sbin/tm-iscsi-node", "etc/sudoers.d/tm_iscsi", "etc/tm_iscsi/node.conf",
                 "etc/systemd/system/tm-iscsi-activate.service"):
        assert not (root / gone).exists(), (gone, out)
    assert (root / "etc/iscsi/iscsid.conf").read_text() == ISCSID
    assert (root / "etc/lvm/lvmlocal.conf").read_text() == LVMLOCAL
    # The host keeps its initiator name: the storage node's ACLs may still name it.
    assert (root / "etc/iscsi/initiatorname.iscsi").exists()


def test_the_dry_run_never_prints_the_chap_secret_and_installs_it_0600(root, site):
    site.write_text(SITE + "[datastore]\nchap_user = one\nchap_password = s3cret-s3cret-x\n")
    dry = run("--role", "frontend", "--site", site, "--root", root, "--skip", "python",
              "--dry-run")
    assert "s3cret-s3cret-x" not in dry.stdout + dry.stderr
    assert 'ISCSI_CHAP_PASSWORD = "****' in dry.stdout
    run("--role", "frontend", "--site", site, "--root", root, "--skip", "python")
    for name in ("image.tpl", "system.tpl"):
        path = root / "etc/one/tm_iscsi" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "s3cret-s3cret-x" in path.read_text()
