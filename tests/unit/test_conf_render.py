"""The site file renders into every configuration file, and what is rendered is what oned,
onecfg, sudo and LVM accept."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tm_iscsi import config_render as cr
from tm_iscsi.site import SiteError, load_site

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "conf" / "site.example.ini"

LAB_SITE = """\
[cloud]
opennebula = 7.4
oneadmin = oneadmin
frontend = frontend
[storage]
host = storage
vg = vg-one-100
devices = /dev/ubdb
[host]
devices = /dev/ubdb
[lvm]
system_devices = /dev/disk/by-id/ata-root.part3
"""


@pytest.fixture
def rendered():
    return cr.render(load_site(EXAMPLE))


def write_site(tmp_path, text):
    path = tmp_path / "site.ini"
    path.write_text(text)
    return path


def test_example_site_renders_every_file(rendered):
    for name in ("oned/iscsi_lvm.conf", "oned/iscsi_lvm.onecfg", "datastores/image.tpl",
                 "datastores/system.tpl", "frontend/tm_iscsi.conf", "frontend/defaultrc.block",
                 "sudoers/tm_iscsi", "lvm/storage.block", "lvm/host.block",
                 "lvm/storage-host.block", "iscsi/iscsid.conf.block",
                 "systemd/tm-iscsi-activate.service", "systemd/tm-iscsi-cache-warm.service",
                 "systemd/tm-iscsi-cache-warm.timer", "cron/tm-iscsi-cache-warm",
                 "node/tm-iscsi-node", "install.env"):
        assert rendered[name].strip(), name
    assert not any("{{" in text or "{%" in text for text in rendered.values())


def test_cli_writes_the_files(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "--site",
                             str(EXAMPLE), "--out", str(out)], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "oned" / "iscsi_lvm.conf").is_file()
    assert (out / "node" / "tm-iscsi-node").stat().st_mode & 0o111
    check = subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "validate",
                            str(out / "oned" / "iscsi_lvm.conf")], cwd=REPO, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


def test_oned_snippet_is_a_complete_registration(rendered):
    snippet = rendered["oned/iscsi_lvm.conf"]
    assert cr.validate_snippet(snippet, cr.STOCK["7.4"]["inherit"]) == []
    reg = cr.snippet_registration(snippet)
    assert reg["tm_mad_conf"] == {
        "NAME": "iscsi_lvm", "LN_TARGET": "NONE", "CLONE_TARGET": "SELF", "SHARED": "YES",
        "DS_MIGRATE": "YES", "DRIVER": "raw", "ALLOW_ORPHANS": "YES", "TM_MAD_SYSTEM": "",
        "DISK_TYPE": "BLOCK"}
    assert reg["ds_mad_conf"] == {"NAME": "iscsi_lvm", "REQUIRED_ATTRS": "ISCSI_HOST",
                                  "PERSISTENT_ONLY": "NO", "MARKETPLACE_ACTIONS": "export"}
    # The full stock lists, with iscsi_lvm appended: what an admin pastes over the old line.
    assert reg["tm_mad_arguments"] == cr.STOCK["7.4"]["tm"] + ",iscsi_lvm"
    ds = reg["datastore_mad_arguments"].split()
    assert ds[ds.index("-d") + 1].endswith(",interactive,iscsi_lvm")
    assert ds[ds.index("-s") + 1].endswith(",purefa,iscsi_lvm")
    assert {"VG_NAME", "CACHE_MODE", "ISCSI_PORTAL"} <= set(reg["inherit"])
    assert "ISCSI_CHAP_PASSWORD" not in reg["inherit"]


def test_6_10_extends_its_own_stock_lists(tmp_path):
    site = load_site(write_site(tmp_path, EXAMPLE.read_text().replace(
        "opennebula = 7.4", "opennebula = 6.10.2")))
    reg = cr.snippet_registration(cr.render(site)["oned/iscsi_lvm.conf"])
    assert reg["tm_mad_arguments"] == cr.STOCK["6.10"]["tm"] + ",iscsi_lvm"
    assert "vcenter,iscsi_lvm" in reg["datastore_mad_arguments"]


def test_onecfg_patch_uses_the_line_format_and_agrees_with_the_snippet(rendered):
    patch = rendered["oned/iscsi_lvm.onecfg"]
    changes = cr.parse_onecfg(patch)
    assert changes[0][:3] == ("/etc/one/oned.conf", "set", ["TM_MAD", "ARGUMENTS"])
    lines = [l for l in patch.splitlines() if l and not l.startswith("#")]
    # A section that repeats is addressed by its quoted NAME; values keep oned's quotes.
    assert '/etc/one/oned.conf ins TM_MAD_CONF/"iscsi_lvm"/LN_TARGET "\\"NONE\\""' in lines
    assert '/etc/one/oned.conf ins TM_MAD_CONF/"iscsi_lvm"/TM_MAD_SYSTEM "\\"\\""' in lines
    # NAME first: onecfg creates a new section only from its identifying attribute.
    conf_paths = [c[2] for c in changes if c[2][0] == "TM_MAD_CONF"]
    assert conf_paths[0][2] == "NAME"
    patched = cr.onecfg_registration(changes)
    pasted = cr.snippet_registration(rendered["oned/iscsi_lvm.conf"])
    # The patch names every inherited attribute (onecfg skips those already there); the snippet
    # leaves out the ones the stock oned.conf has.
    assert set(patched.pop("inherit")) == set(pasted.pop("inherit")) | {"ISCSI_HOST"}
    assert patched == pasted


@pytest.mark.parametrize("line, reason", [
    ('/etc/one/oned.conf add TM_MAD/ARGUMENTS "\\"x\\""', "unknown command"),
    ('etc/one/oned.conf set TM_MAD/ARGUMENTS "\\"x\\""', "absolute"),
    ("/etc/one/oned.conf set TM_MAD/ARGUMENTS '\"x\"'", "not JSON"),
    ('/etc/one/oned.conf set TM_MAD/ARGUMENTS "x"', "double-quoted"),
    ("/etc/one/oned.conf set TM_MAD/ARGUMENTS", "needs a value"),
])
def test_onecfg_parser_rejects_broken_lines(line, reason):
    with pytest.raises(cr.OnecfgError, match=reason):
        cr.parse_onecfg(line)


# -- the validator fails on what oned would refuse -------------------------------------------

def _broken(rendered, old, new, count=1):
    snippet = rendered["oned/iscsi_lvm.conf"]
    assert old in snippet, old
    return snippet.replace(old, new, count)


@pytest.mark.parametrize("old, new, reason", [
    (",iscsi_lvm\"\n]\n\nDATASTORE_MAD", "\"\n]\n\nDATASTORE_MAD", "TM_MAD .*after -d"),
    (",purefa,iscsi_lvm\"\n]\n\n#", ",purefa\"\n]\n\n#", "DATASTORE_MAD .*after -s"),
    ('LN_TARGET = "NONE"', 'LN_TARGET = "SYSTEM"', "LN_TARGET is \"SYSTEM\""),
    ('LN_TARGET = "NONE"', 'LN_TARGET = "ELSEWHERE"', "not one of"),
    ('DISK_TYPE = "BLOCK"', "DISK_TYPE = BLOCK", "must be quoted"),
    ('DISK_TYPE = "BLOCK"\n]', 'DISK_TYPE = "BLOCK"\n', "expected"),
    ('SHARED = "YES",', 'SHARED = "YES",\n    SHARED = "NO",', "appears twice"),
    ('SHARED = "YES",', 'SHARD = "YES",', "SHARED is missing|knows no attribute SHARD"),
    ('REQUIRED_ATTRS = "ISCSI_HOST"', 'REQUIRED_ATTRS = "DISK_TYPE"', "ISCSI_HOST"),
    ('EXECUTABLE = "one_tm"', 'EXECUTABLE = "one_tmx"', "EXECUTABLE"),
    ('"-t 15 -d dummy', '"-t 15 -d dummy,dummy', "listed twice"),
    ('INHERIT_DATASTORE_ATTR = "VG_NAME"', "", "VG_NAME\" is missing"),
    ('ARGUMENTS = "-t 15', 'ARGUMENTS = "-t 15 -d', "comma list"),
    ('MARKETPLACE_ACTIONS = "export"', 'MARKETPLACE_ACTIONS = "export', "unterminated"),
])
def test_validator_rejects_broken_snippets(rendered, old, new, reason):
    try:
        problems = cr.validate_snippet(_broken(rendered, old, new), cr.STOCK["7.4"]["inherit"])
    except cr.OnedSyntaxError as err:
        problems = [str(err)]
    assert problems, "validator accepted a broken snippet"
    assert any(re.search(reason, p) for p in problems), problems


def test_validator_rejects_a_second_registration(rendered):
    snippet = rendered["oned/iscsi_lvm.conf"]
    block = snippet[snippet.index("DS_MAD_CONF = ["):snippet.index("]", snippet.index(
        "DS_MAD_CONF = [")) + 1]
    problems = cr.validate_snippet(snippet + "\n" + block + "\n", cr.STOCK["7.4"]["inherit"])
    assert any("appears 2 times" in p for p in problems)


def test_validator_rejects_foreign_sections_in_the_snippet(rendered):
    problems = cr.validate_snippet(rendered["oned/iscsi_lvm.conf"] + 'PORT = "2633"\n',
                                   cr.STOCK["7.4"]["inherit"])
    assert any("PORT does not belong" in p for p in problems)


def test_datastore_templates_have_the_attributes_the_driver_reads(rendered):
    image = {a.name: a.value for a in cr.parse_oned(rendered["datastores/image.tpl"], True)}
    system = {a.name: a.value for a in cr.parse_oned(rendered["datastores/system.tpl"], True)}
    assert image["DS_MAD"] == image["TM_MAD"] == system["TM_MAD"] == "iscsi_lvm"
    assert image["TYPE"] == "IMAGE_DS" and system["TYPE"] == "SYSTEM_DS"
    for ds in (image, system):
        assert ds["DISK_TYPE"] == "BLOCK"
        assert ds["ISCSI_HOST"] == "storage" and ds["VG_NAME"] == "vg-one-100"
        assert ds["CACHE_MODE"] == "read+writeback"
    assert "DS_MAD" not in system
    assert "ISCSI_CHAP_PASSWORD" not in image


def test_chap_goes_into_both_datastores(tmp_path):
    text = EXAMPLE.read_text().replace("chap_user =", "chap_user = one").replace(
        "chap_password =", "chap_password = s3cret-s3cret")
    out = cr.render(load_site(write_site(tmp_path, text)))
    for name in ("datastores/image.tpl", "datastores/system.tpl"):
        assert 'ISCSI_CHAP_PASSWORD = "s3cret-s3cret"' in out[name]
    assert "s3cret" not in out["oned/iscsi_lvm.conf"]


# -- check-oned on a whole oned.conf ---------------------------------------------------------

# Written for these tests in the shapes a real oned.conf has: bare values, multi-line strings,
# comments inside sections, lower-case names, sections that repeat.
FULL_ONED = """\
# a front-end's oned.conf
LOG = [
  SYSTEM      = "file",
  DEBUG_LEVEL = 3
]
PORT = 2633
SCRIPTS_REMOTE_DIR=/var/tmp/one
VNC_PORTS = [
    START    = 5900,
    RESERVED = "32768:65536"
    # RESERVED = "6800, 6801"
]
VM_MANAGE_OPERATIONS = "undeploy, hold,
    release, stop"
IM_MAD = [ NAME = "monitord", EXECUTABLE = "onemonitord", THREADS = 8 ]
TM_MAD = [
    EXECUTABLE = "one_tm",
    ARGUMENTS = "-t 30 -d dummy,lvm,ssh,ceph,mine"
]
datastore_mad = [
    executable = "one_datastore",
    arguments  = "-t 30 -d dummy,fs,ceph,mine -s shared,ssh,ceph"
]
INHERIT_DATASTORE_ATTR  = "ISCSI_HOST"
INHERIT_DATASTORE_ATTR  = "DISK_TYPE"
TM_MAD_CONF = [
    NAME = "ceph", LN_TARGET = "NONE", CLONE_TARGET = "SELF", SHARED = "YES",
    TM_MAD_SYSTEM = "ssh", LN_TARGET_SSH = "SYSTEM"
]
DS_MAD_CONF = [
    NAME = "ceph", REQUIRED_ATTRS = "DISK_TYPE,BRIDGE_LIST", PERSISTENT_ONLY = "NO"
]
"""


def apply_onecfg(attrs, changes):
    """What `onecfg patch` does with these changes to a parsed oned.conf (set replaces a value,
    ins adds a missing one, a section is found by its NAME and created by it)."""
    for filename, command, path, value in changes:
        value = value[1:-1]
        if len(path) == 2:
            section = next(a for a in attrs if a.name == path[0])
            section.pairs = [p for p in section.pairs if p[0] != path[1]] + [(path[1], value,
                                                                               True)]
        elif len(path) == 3:
            name = path[1].strip('"')
            section = next((a for a in attrs if a.name == path[0] and a.get("NAME") == name),
                           None)
            if section is None:
                assert path[2] == "NAME", "onecfg creates a section from its NAME only"
                section = cr.Attr(path[0], None, 0, [])
                attrs.append(section)
            if section.get(path[2]) is None:
                section.pairs.append((path[2], value, True))
        else:
            if value not in [a.value for a in attrs if a.name == path[0]]:
                attrs.append(cr.Attr(path[0], value, 0))
    return attrs


def test_check_oned_lists_what_a_plain_oned_conf_misses(tmp_path):
    path = tmp_path / "oned.conf"
    path.write_text(FULL_ONED)
    problems = cr.check_oned_file(path)
    assert any("TM_MAD (line" in p and "after -d" in p for p in problems)
    assert any("no TM_MAD_CONF" in p for p in problems)
    assert any("no DS_MAD_CONF" in p for p in problems)
    result = subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "check-oned",
                             str(path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "TM_MAD_CONF" in result.stderr


def test_rendering_from_a_real_oned_conf_keeps_its_lists(tmp_path):
    path = tmp_path / "oned.conf"
    path.write_text(FULL_ONED)
    out = cr.render(load_site(EXAMPLE), oned_conf=path)
    reg = cr.snippet_registration(out["oned/iscsi_lvm.conf"])
    assert reg["tm_mad_arguments"] == "-t 30 -d dummy,lvm,ssh,ceph,mine,iscsi_lvm"
    assert reg["datastore_mad_arguments"] == (
        "-t 30 -d dummy,fs,ceph,mine,iscsi_lvm -s shared,ssh,ceph,iscsi_lvm")
    assert "INHERIT_DATASTORE_ATTR = \"ISCSI_HOST\"\n" not in out["oned/iscsi_lvm.conf"]


def test_the_onecfg_patch_registers_the_driver_in_a_real_oned_conf(tmp_path):
    path = tmp_path / "oned.conf"
    path.write_text(FULL_ONED)
    out = cr.render(load_site(EXAMPLE), oned_conf=path)
    attrs = apply_onecfg(cr.parse_oned(FULL_ONED), cr.parse_onecfg(out["oned/iscsi_lvm.onecfg"]))
    assert cr.check_registration(attrs) == []
    # A second application changes nothing: every value is already there.
    again = apply_onecfg(attrs, cr.parse_onecfg(out["oned/iscsi_lvm.onecfg"]))
    assert cr.check_registration(again) == []
    assert len([a for a in again if a.name == "TM_MAD_CONF"]) == 2


def test_check_oned_accepts_a_registered_file(tmp_path, rendered):
    snippet = rendered["oned/iscsi_lvm.conf"]
    registered = re.sub(r"TM_MAD = \[.*?\]\ndatastore_mad = \[.*?\]\n", "", FULL_ONED,
                        flags=re.S) + snippet
    path = tmp_path / "oned.conf"
    path.write_text(registered)
    assert cr.check_oned_file(path) == []


def test_check_oned_reports_syntax_errors_with_a_line(tmp_path):
    path = tmp_path / "oned.conf"
    path.write_text(FULL_ONED.replace('SHARED = "YES",\n    TM_MAD_SYSTEM', 'SHARED = "YES"\n'
                                      '    TM_MAD_SYSTEM'))
    (problem,) = cr.check_oned_file(path)
    assert "line 28" in problem


# -- sudoers ---------------------------------------------------------------------------------

def test_sudoers_allows_oneadmin_the_helper_and_nothing_else(rendered):
    rules = [l for l in rendered["sudoers/tm_iscsi"].splitlines()
             if l.strip() and not l.startswith("#") and not l.startswith("Defaults")]
    assert rules == ["oneadmin ALL=(root) NOPASSWD: /usr/sbin/tm-iscsi-node"]
    assert "ALL:" not in rendered["sudoers/tm_iscsi"] and "SETENV" not in rendered[
        "sudoers/tm_iscsi"]
    # The wrapper sudo runs cannot be steered by the caller's environment.
    wrapper = rendered["node/tm-iscsi-node"]
    assert re.search(r"^exec /opt/tm_iscsi-venv/bin/python -I -m tm_iscsi\.node \"\$@\"$",
                     wrapper, re.M)


@pytest.mark.skipif(not shutil.which("visudo"), reason="visudo not installed (apt sudo)")
def test_sudoers_passes_visudo(rendered, tmp_path):
    path = tmp_path / "tm_iscsi"
    path.write_text(rendered["sudoers/tm_iscsi"])
    path.chmod(0o440)
    result = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(rendered["sudoers/tm_iscsi"].replace("NOPASSWD:", "NOPASSWD"))
    assert subprocess.run(["visudo", "-cf", str(path)], capture_output=True).returncode != 0


# -- LVM filter ------------------------------------------------------------------------------

def _filter(block):
    m = re.search(r"^devices \{\n(.*?)^\}", block, re.S | re.M)
    assert m, "no devices { } section"
    body = m.group(1)
    assert re.search(r"^\s*scan_lvs = 0$", body, re.M)
    fm = re.search(r"^\s*global_filter = \[ (.*) \]$", body, re.M)
    assert fm, "no global_filter = [ ... ] on one line"
    entries = re.findall(r'"([ar])\|([^|"]*)\|"', fm.group(1))
    assert ", ".join(f'"{k}|{p}|"' for k, p in entries) == fm.group(1), "stray text in filter"
    return entries


def _accepted(entries, device):
    for kind, pattern in entries:
        if re.search(pattern, device):
            return kind == "a"
    return True


def test_lvm_filter_accepts_the_own_disks_and_rejects_the_rest(tmp_path):
    out = cr.render(load_site(write_site(tmp_path, LAB_SITE)))
    for name, own in (("lvm/storage.block", ["/dev/ubdb"]), ("lvm/host.block", ["/dev/ubdb"])):
        entries = _filter(out[name])
        assert entries[-1] == ("r", ".*")
        for device in own + ["/dev/disk/by-id/ata-root.part3"]:
            assert _accepted(entries, device), device
        for device in ("/dev/sda", "/dev/sdb", "/dev/dm-0", "/dev/mapper/vg-one-100-img--7",
                       "/dev/ubdb1", "/dev/ubdbx", "/dev/vg-one-100/img-7",
                       "/dev/disk/by-id/ata-rootXpart3",
                       "/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.x:y-lun-0"):
            assert not _accepted(entries, device), device
    assert out["lvm/storage.block"].startswith("# BEGIN tm_iscsi")
    assert out["lvm/storage.block"].rstrip().endswith("# END tm_iscsi")


def test_host_filter_does_not_accept_the_storage_nodes_disks(rendered):
    storage = _filter(rendered["lvm/storage.block"])
    host = _filter(rendered["lvm/host.block"])
    both = _filter(rendered["lvm/storage-host.block"])
    storage_dev = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"
    host_dev = "/dev/disk/by-id/nvme-eui.0025388b91b2c3d4"
    assert _accepted(storage, storage_dev) and not _accepted(storage, host_dev)
    assert _accepted(host, host_dev) and not _accepted(host, storage_dev)
    assert _accepted(both, host_dev) and _accepted(both, storage_dev)
    env = dict(l.split("=", 1) for l in rendered["install.env"].splitlines()
               if l and not l.startswith("#"))
    assert env["LVM_FILTER_HOST"] == _filter_text(rendered["lvm/host.block"])


def _filter_text(block):
    return re.search(r"global_filter = (\[.*\])$", block, re.M).group(1)


# -- site file -------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, reason", [
    ("[lvm]", "[lvmx]", "unknown section"),
    ("cache_vg =", "cachevg =", "unknown key"),
    ("devices = /dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "devices = /dev/sdb|x", "not a /dev"),
    ("devices = /dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "devices = /dev/sd b", "not a /dev"),
    ("devices = /dev/disk/by-id/wwn-0x5000c500a1b2c3d4", 'devices = "/dev/sdb"', "not a /dev"),
    ("chap_user =", "chap_user = one", "set both"),
    ("chap_user =", "chap_user = one!admin", "CHAP user name"),
    ("cache_mode = read+writeback", "cache_mode = always", "not one of"),
    ("opennebula = 7.4", "opennebula = 5.12", "targets"),
    ("vg = vg-one-100", "vg = vg one", "valid LVM name"),
    ("oneadmin = oneadmin", "oneadmin = one admin", "user name"),
    ("image_name = iscsi_lvm_images", 'image_name = my"ds', "datastore name"),
    ("login_retry_max = 2", "login_retry_max = 8", "attach_timeout"),
    ("pool_percent = 90", "pool_percent = lots", "whole number"),
])
def test_site_file_mistakes_are_refused_with_the_key(tmp_path, old, new, reason):
    text = EXAMPLE.read_text()
    assert old in text
    with pytest.raises(SiteError, match=reason):
        load_site(write_site(tmp_path, text.replace(old, new)))


def test_missing_site_file_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "--site",
                             str(tmp_path / "nope.ini"), "--out", str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "nope.ini" in result.stderr


def test_install_env_is_plain_key_value(rendered):
    for line in rendered["install.env"].splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        assert re.match(r"^[A-Z_]+$", key)
        # install.sh reads these without eval; still, nothing a shell would act on.
        assert not set(value) & set("`\\'\n;&<>()") and "${" not in value, line


def test_iscsid_block_sets_manual_startup_and_explains_the_timeout(rendered):
    block = rendered["iscsi/iscsid.conf.block"]
    settings = dict(re.findall(r"^(node\.[^ ]+) = (.*)$", block, re.M))
    assert settings["node.startup"] == "manual"
    assert settings["node.session.timeo.replacement_timeout"] == "300"
    assert int(settings["node.conn[0].timeo.noop_out_timeout"]) > 5
    assert "reboot of the storage node" in block


def test_activation_unit_runs_after_iscsid_and_before_libvirt(rendered):
    unit = rendered["systemd/tm-iscsi-activate.service"]
    assert "ExecStart=/usr/sbin/tm-iscsi-node activate" in unit
    assert re.search(r"^After=.*iscsid\.service.*network-online\.target|^After=.*network-online"
                     r"\.target.*iscsid\.service", unit, re.M)
    assert re.search(r"^Before=.*libvirtd\.service", unit, re.M)
    assert "Type=oneshot" in unit and "WantedBy=multi-user.target" in unit


def test_cache_warm_timer_service_and_cron_agree_on_the_site_values(tmp_path):
    site = write_site(tmp_path, EXAMPLE.read_text().replace(
        "warm_every_minutes = 5", "warm_every_minutes = 15").replace(
        "warm_seconds = 60", "warm_seconds = 120"))
    out = cr.render(load_site(site))
    command = "/usr/sbin/tm-iscsi-node cache-warm --vg vg-tm-iscsi-cache --seconds 120"
    assert f"ExecStart={command}\n" in out["systemd/tm-iscsi-cache-warm.service"]
    timer = out["systemd/tm-iscsi-cache-warm.timer"]
    assert "OnUnitActiveSec=15min" in timer and "WantedBy=timers.target" in timer
    line, = [l for l in out["cron/tm-iscsi-cache-warm"].splitlines()
             if l and not l.startswith("#")]
    assert line.split()[:6] == ["*/15", "*", "*", "*", "*", "root"] and command in line


@pytest.mark.parametrize("key, value", [("warm_every_minutes", "0"),
                                        ("warm_every_minutes", "61"),
                                        ("warm_seconds", "1")])
def test_cache_warm_values_out_of_range_are_refused(tmp_path, key, value):
    text = re.sub(rf"^{key} = .*$", f"{key} = {value}", EXAMPLE.read_text(), flags=re.M)
    with pytest.raises(SiteError, match=key):
        load_site(write_site(tmp_path, text))


# -- vmm_execrc: live disk snapshots ------------------------------------------------------------

STOCK_EXECRC = """\
# Space separated list of VMM-TM pairs that support live disk snapshots. VMM
# and TM must be separated by '-'
LIVE_DISK_SNAPSHOTS="kvm-qcow2 kvm-ceph mine-local"

# Space separated list VNM_MAD-ACTION pairs that run locally
VNMAD_LOCAL_ACTIONS="elastic-post elastic-clean"
"""


def test_live_disk_snapshots_extend_the_real_vmm_execrc(tmp_path):
    path = tmp_path / "vmm_execrc"
    path.write_text(STOCK_EXECRC)
    assert cr.check_vmm_execrc_file(path) == [
        f"{path}: LIVE_DISK_SNAPSHOTS does not list kvm-iscsi_lvm qemu-iscsi_lvm (running VMs "
        "cannot take disk snapshots)"]
    out = cr.render(load_site(EXAMPLE), vmm_execrc=path)
    want = "kvm-qcow2 kvm-ceph mine-local kvm-iscsi_lvm qemu-iscsi_lvm"
    line = cr.parse_shell_rc(out["oned/vmm_execrc.line"])
    assert line == {"LIVE_DISK_SNAPSHOTS": want}
    assert cr.onecfg_live_snapshots(cr.parse_onecfg(out["oned/iscsi_lvm.onecfg"])) == want
    # The line pasted over the old one is what check-oned then accepts.
    path.write_text(STOCK_EXECRC.replace('LIVE_DISK_SNAPSHOTS="kvm-qcow2 kvm-ceph mine-local"',
                                         out["oned/vmm_execrc.line"].strip().splitlines()[-1]))
    assert cr.check_vmm_execrc_file(path) == []
    # Rendering again from the registered file adds nothing twice.
    again = cr.render(load_site(EXAMPLE), vmm_execrc=path)
    assert cr.parse_shell_rc(again["oned/vmm_execrc.line"]) == line


def test_without_a_vmm_execrc_the_stock_list_of_the_release_is_extended(rendered):
    words = cr.parse_shell_rc(rendered["oned/vmm_execrc.line"])["LIVE_DISK_SNAPSHOTS"].split()
    assert words[:3] == ["kvm-qcow2", "kvm-shared", "kvm-ceph"] and "kvm-lvm" in words
    assert words[-2:] == ["kvm-iscsi_lvm", "qemu-iscsi_lvm"]


def test_check_oned_cli_checks_vmm_execrc_too(tmp_path, rendered):
    oned = tmp_path / "oned.conf"
    oned.write_text(re.sub(r"TM_MAD = \[.*?\]\ndatastore_mad = \[.*?\]\n", "", FULL_ONED,
                           flags=re.S) + rendered["oned/iscsi_lvm.conf"])
    execrc = tmp_path / "vmm_execrc"
    execrc.write_text(STOCK_EXECRC)
    result = subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "check-oned",
                             str(oned), "--vmm-execrc", str(execrc)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "kvm-iscsi_lvm" in result.stderr


def test_a_refused_chap_secret_is_never_echoed_and_the_rule_is_named(tmp_path):
    text = EXAMPLE.read_text().replace("chap_user =", "chap_user = one").replace(
        "chap_password =", "chap_password = my secret with blanks'")
    with pytest.raises(SiteError) as err:
        load_site(write_site(tmp_path, text))
    assert "my secret" not in str(err.value) and "blanks'" not in str(err.value)
    assert "****" in str(err.value) and "A-Z a-z 0-9" in str(err.value)


def test_rendered_files_with_the_secret_are_the_owner_s_alone(tmp_path):
    text = EXAMPLE.read_text().replace("chap_user =", "chap_user = one").replace(
        "chap_password =", "chap_password = s3cret-s3cret")
    out = tmp_path / "out"
    cr.write(cr.render(load_site(write_site(tmp_path, text))), out)
    for name in ("image.tpl", "system.tpl"):
        assert (out / "datastores" / name).stat().st_mode & 0o777 == 0o600
        assert "s3cret-s3cret" in (out / "datastores" / name).read_text()
    assert (out / "oned" / "iscsi_lvm.conf").stat().st_mode & 0o777 == 0o644
    assert "s3cret" not in (out / "oned" / "iscsi_lvm.conf").read_text()
