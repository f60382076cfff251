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
    helper (root) makes for a disk link must be oneadmin's, not root's; the link itself is made
    with oneadmin's rights."""
    import contextlib
    node_conf(ONEADMIN="nobody", DATASTORES=str(tmp_path / "ds"))
    nobody = pwd.getpwnam("nobody")
    chowned = []
    acting = []
    monkeypatch.setattr(os, "lchown", lambda p, u, g: chowned.append((str(p), u, g)))

    @contextlib.contextmanager
    def as_oneadmin():
        acting.append(True)
        yield
    monkeypatch.setattr(paths, "as_oneadmin", as_oneadmin)
    link = tmp_path / "ds" / "101" / "42" / "disk.0"
    cmd_host.replace_symlink(str(link), "/dev/null")
    assert os.readlink(link) == "/dev/null" and acting == [True]
    made = [p for p, _u, _g in chowned if not os.path.basename(p).startswith(".disk.0")]
    assert made == [str(tmp_path / "ds"), str(tmp_path / "ds" / "101"),
                    str(tmp_path / "ds" / "101" / "42")]
    assert {(u, g) for _p, u, g in chowned} == {(nobody.pw_uid, nobody.pw_gid)}


@pytest.mark.parametrize("path, fragment", [
    ("relative/path", "must be absolute"),
    ("/elsewhere/101/42", "only works under"),
    ("{root}/101/../../etc/passwd", "'..' is not allowed"),
    ("{root}", "only works under"),
    ("{root}/101/" + "x" * 1100, "too long"),
    ("{root}/101/a\nb", "multi-line"),
])
def test_paths_outside_or_odd_are_refused(tmp_path, node_conf, path, fragment):
    node_conf(DATASTORES=str(tmp_path))
    with pytest.raises(NodeError, match=fragment):
        paths.checked(path.format(root=tmp_path))


@pytest.mark.parametrize("link_at", ["101", "101/42", "101/42/sub"])
def test_a_symlink_in_any_component_is_refused_not_followed(tmp_path, node_conf, link_at):
    node_conf(DATASTORES=str(tmp_path / "ds"))
    outside = tmp_path / "etc"
    outside.mkdir()
    parts = link_at.split("/")
    (tmp_path / "ds" / "/".join(parts[:-1])).mkdir(parents=True, exist_ok=True)
    (tmp_path / "ds" / link_at).symlink_to(outside)
    with pytest.raises(NodeError, match="is a symlink"):
        paths.checked(str(tmp_path / "ds" / "101" / "42" / "sub" / "file"))
    with pytest.raises(NodeError, match="is a symlink"):
        paths.checked(str(tmp_path / "ds" / link_at))
    # Only a disk link itself may be a link (it points at the LUN).
    assert paths.checked(str(tmp_path / "ds" / link_at), leaf_may_be_link=True)


def test_a_file_in_the_middle_of_a_path_is_refused(tmp_path, node_conf):
    node_conf(DATASTORES=str(tmp_path))
    (tmp_path / "101").write_text("")
    with pytest.raises(NodeError, match="not a directory"):
        paths.checked(str(tmp_path / "101" / "42"))


def test_without_the_oneadmin_user_the_ancestor_owns(tmp_path, node_conf, monkeypatch):
    node_conf(ONEADMIN="no-such-user-tm-iscsi")
    st = os.stat(tmp_path)
    assert paths.owner_of_tree(str(tmp_path / "a" / "b")) == (st.st_uid, st.st_gid)
