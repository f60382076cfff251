"""What the front-end hands to other programs is checked first: host names before ssh's argv
(and options end before the host), another TM's name before it becomes a path."""
import os
import stat
import subprocess

import pytest

from tm_iscsi import settings as settings_mod
from tm_iscsi.errors import DriverError
from tm_iscsi.remote import Node, checked_host, ssh_command
from tm_iscsi.tm import migrate


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", "host;id", "a b", "",
                                  "$(reboot)", "x" * 300, "host\n", "../etc"])
def test_bad_host_names_never_reach_ssh(host):
    with pytest.raises(DriverError, match="not a host name"):
        checked_host(host)
    with pytest.raises(DriverError):
        Node(host, settings_mod.load({"TM_ISCSI_CONF": "/none"}))


@pytest.mark.parametrize("host", ["storage", "host-1.example.org", "10.0.0.5", "[fd00::5]",
                                  "node_7"])
def test_good_host_names_and_options_end_before_the_host(host):
    argv = ssh_command(("ssh", "-o", "BatchMode=yes"), host, ["sudo", "-n", "tm-iscsi-node",
                                                              "lv-info", "a b"])
    assert argv == ["ssh", "-o", "BatchMode=yes", "--", host,
                    "sudo -n tm-iscsi-node lv-info 'a b'"]


class _Args:
    caller_tm = None
    src_host, dst_host, vm_dir, vmid, dsid = "host1", "host2", "/var/lib/one/datastores/0/7", 7, 0


class _Disk:
    def __init__(self, tm):
        self.tm_mad = tm


class _Vm:
    def __init__(self, *tms):
        self.disks = [_Disk(t) for t in tms]


def _script(path, out):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {out}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_other_tm_runs_from_oned_s_remotes_tree(tmp_path, monkeypatch):
    out = tmp_path / "ran"
    _script(tmp_path / "remotes" / "tm" / "ssh" / "premigrate", out)
    monkeypatch.setenv("TM_ISCSI_REMOTES_DIR", str(tmp_path / "remotes"))
    migrate._migrate_other(_Args, "premigrate", _Vm("iscsi_lvm", "ssh"), "<VM/>")
    assert out.read_text().split() == [str(tmp_path / "remotes/tm/ssh/premigrate"), "host1",
                                       "host2", "/var/lib/one/datastores/0/7", "7", "0",
                                       "iscsi_lvm"]


@pytest.mark.parametrize("tm", ["../../../../tmp/evil", "ssh/../../evil", "Evil", "a b", "x;id"])
def test_a_tm_name_from_the_vm_xml_never_becomes_a_path(tmp_path, monkeypatch, tm):
    out = tmp_path / "ran"
    _script(tmp_path / "tmp" / "evil" / "premigrate", out)
    monkeypatch.setenv("TM_ISCSI_REMOTES_DIR", str(tmp_path / "remotes"))
    with pytest.raises(DriverError, match="is not a driver name"):
        migrate._migrate_other(_Args, "premigrate", _Vm(tm), "<VM/>")
    assert not out.exists()


def test_the_action_scripts_say_where_the_remotes_tree_is(tmp_path):
    """The remotes scripts export TM_ISCSI_REMOTES_DIR: the tree they are installed in."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(here, "remotes", "tm", "iscsi_lvm", "premigrate")
    probe = tmp_path / "python"
    probe.write_text("#!/bin/sh\necho \"$TM_ISCSI_REMOTES_DIR\"\n")
    probe.chmod(0o755)
    result = subprocess.run([script], env=dict(os.environ, TM_ISCSI_PYTHON=str(probe)),
                            capture_output=True, text=True)
    assert result.stdout.strip() == os.path.join(here, "remotes")
