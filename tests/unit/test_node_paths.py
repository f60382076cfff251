"""Where the node helper may write on a host (node.conf's DATASTORES, oned's
DATASTORE_LOCATION) and who owns what it makes there (node.conf's ONEADMIN)."""
import os
import pwd

import pytest

from tm_iscsi.node import cmd_host, nodeconf, paths
from tm_iscsi.node.errors import NodeError


@pytest.fixture
def node_conf(tmp_path, monkeypatch):
    conf = tmp_path / "node.conf"
    monkeypatch.setattr(nodeconf, "PATH", str(conf))
    monkeypatch.delenv("TM_ISCSI_DATASTORES_DIR", raising=False)

    def write(**values):
        conf.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return write


def test_the_datastores_directory_comes_from_node_conf(tmp_path, node_conf, monkeypatch):
    node_conf(DATASTORES="/srv/one/datastores/")
    assert paths.datastores_dir() == "/srv/one/datastores"
    assert paths.checked("/srv/one/datastores/101/7/disk.0") == "/srv/one/datastores/101/7/disk.0"
    with pytest.raises(NodeError, match="only works under /srv/one/datastores"):
        paths.checked("/var/lib/one/datastores/101/7/disk.0")


def test_without_node_conf_the_default_location(tmp_path, node_conf):
    assert paths.datastores_dir() == "/var/lib/one/datastores"


def test_vm_directory_and_link_belong_to_oneadmin(tmp_path, node_conf, monkeypatch):
    """The KVM driver writes deployment.N into the VM directory as oneadmin: the directory the
    helper (root) makes for a disk link must be oneadmin's, not root's."""
    node_conf(ONEADMIN="nobody", DATASTORES=str(tmp_path / "ds"))
    nobody = pwd.getpwnam("nobody")
    chowned = []
    monkeypatch.setattr(os, "chown", lambda p, u, g: chowned.append((p, u, g)))
    monkeypatch.setattr(os, "lchown", lambda p, u, g: chowned.append(("link", u, g)))
    link = tmp_path / "ds" / "101" / "42" / "disk.0"
    cmd_host.replace_symlink(str(link), "/dev/null")
    assert os.readlink(link) == "/dev/null"
    made = [p for p, _u, _g in chowned if p != "link"]
    assert made == [str(tmp_path / "ds"), str(tmp_path / "ds" / "101"),
                    str(tmp_path / "ds" / "101" / "42")]
    assert {(u, g) for _p, u, g in chowned} == {(nobody.pw_uid, nobody.pw_gid)}


def test_without_the_oneadmin_user_the_ancestor_owns(tmp_path, node_conf, monkeypatch):
    node_conf(ONEADMIN="no-such-user-tm-iscsi")
    st = os.stat(tmp_path)
    assert paths.owner_of_tree(str(tmp_path / "a" / "b")) == (st.st_uid, st.st_gid)
