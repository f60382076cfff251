"""The oned stand-in speaks oned's XML-RPC: checked with the stdlib client and with plain pyone."""

import socket
import xmlrpc.client

import pyone
import pytest

from harness import fixtures
from harness.oned import AUTHENTICATION, NO_EXISTS, XML_RPC_API, OnedStandIn

VM_XML = (fixtures.folder("09-migrate-live") / "01-tm-premigrate.vm.xml").read_text()
DS_XML = (fixtures.folder("09-migrate-live") / "01-tm-premigrate.ds.xml").read_text()


@pytest.fixture
def oned():
    with OnedStandIn() as standin:
        standin.put_xml(VM_XML)
        standin.put_xml(DS_XML)
        yield standin


def _proxy(oned):
    return xmlrpc.client.ServerProxy(oned.endpoint)


def test_replies_have_oneds_shape(oned):
    proxy = _proxy(oned)
    assert proxy.one.vm.info(oned.session, 0) == [True, VM_XML, 0]
    assert proxy.one.vm.info(oned.session, 0, False) == [True, VM_XML, 0]  # optional decrypt flag
    assert proxy.one.datastore.info(oned.session, 101) == [True, DS_XML, 0]
    assert proxy.one.system.version(oned.session) == [True, "7.4.0", 0]
    assert proxy.one.vm.info(oned.session, 1) == [False, "[one.vm.info] Error getting virtual machine [1].", NO_EXISTS]
    assert proxy.one.vm.info("oneadmin:bad", 0)[::2] == [False, AUTHENTICATION]
    assert proxy.one.vm.info(oned.session, "0")[::2] == [False, XML_RPC_API]
    assert oned.calls[:2] == [("one.vm.info", (0,)), ("one.vm.info", (0, False))]


def test_plain_pyone_parses_what_it_serves(oned):
    server = pyone.OneServer(oned.endpoint, session=oned.session)
    vm = server.vm.info(0)
    assert vm.ID == 0 and vm.LCM_STATE == 4
    assert vm.HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "host1"
    ds = server.datastore.info(101)
    assert ds.NAME == "iscsi_lvm_system"
    with pytest.raises(pyone.OneNoExistsException):
        server.image.info(3)
    with pytest.raises(pyone.OneAuthenticationException):
        pyone.OneServer(oned.endpoint, session="x:y").vm.info(0)


def test_documents_from_a_ds_driver_action(oned):
    call = next(c for c in fixtures.calls("ds") if c.action == "snap_revert")
    registered = oned.put_driver_action(call.read(".stdin.xml"))
    assert registered == [("image", 1), ("datastore", 100)]
    assert "<NAME>data-pers</NAME>" in oned.xml("image", 1)
    assert oned.ids("datastore") == [100, 101]


def test_put_file_and_remove(oned):
    kind, image_id = oned.put_file(fixtures.folder("03-image-clone") / "image-2.after.xml")
    assert (kind, image_id) == ("image", 2)
    oned.remove("image", 2)
    assert _proxy(oned).one.image.info(oned.session, 2)[0] is False
    with pytest.raises(ValueError):
        oned.put_xml("<HOST><ID>0</ID></HOST>")


def test_edits(oned):
    oned.edit("vm", 0, "LCM_STATE", 8)
    oned.edit_with("vm", 0, lambda root: root.find("HISTORY_RECORDS").remove(root.find("HISTORY_RECORDS/HISTORY")))
    reply = _proxy(oned).one.vm.info(oned.session, 0)[1]
    assert "<LCM_STATE>8</LCM_STATE>" in reply
    assert reply.count("<HISTORY>") == 5
    with pytest.raises(KeyError):
        oned.edit("vm", 0, "NO/SUCH", 1)


def test_failure_injection_counts_down(oned):
    oned.fail("one.datastore.info", 0x2000, "[one.datastore.info] boom", times=2)
    proxy = _proxy(oned)
    assert proxy.one.datastore.info(oned.session, 101) == [False, "[one.datastore.info] boom", 0x2000]
    assert proxy.one.datastore.info(oned.session, 101)[0] is False
    assert proxy.one.datastore.info(oned.session, 101)[0] is True


def test_image_allocate_builds_a_locked_image(oned):
    proxy = _proxy(oned)
    assert proxy.one.image.allocate(oned.session, 'NAME = "new"\nPERSISTENT = "YES"\nSIZE="10"', 101) == [True, 0, 0]
    reply = proxy.one.image.info(oned.session, 0)[1]
    for fragment in ("<NAME>new</NAME>", "<STATE>4</STATE>", "<PERSISTENT>1</PERSISTENT>", "<DATASTORE>iscsi_lvm_system</DATASTORE>"):
        assert fragment in reply


def test_env_points_at_the_stand_in(oned, tmp_path):
    env = oned.env(tmp_path)
    assert env["ONE_XMLRPC"] == oned.endpoint
    assert (tmp_path / "one_auth").read_text() == oned.session + "\n"
    assert env["ONE_AUTH"] == str(tmp_path / "one_auth")


def test_listens_on_loopback_only_and_frees_the_port():
    standin = OnedStandIn().start()
    host, port = standin._server.server_address
    assert host == "127.0.0.1" and port > 0
    standin.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
