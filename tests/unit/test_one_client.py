"""client: endpoint/auth resolution like the Ruby OCA, and real pyone calls against the stand-in."""

import threading
import time

import pytest

from harness import fixtures
from harness.oned import ACTION, INTERNAL, NO_EXISTS, OnedStandIn
from tm_iscsi.one import client as one_client
from tm_iscsi.one.client import OneClient, resolve_endpoint, resolve_session, resolve_timeout
from tm_iscsi.one.errors import (
    BadXml,
    OneConfigError,
    OnedAuthError,
    OnedError,
    OnedNoSuchObject,
    OnedUnreachable,
)
from tm_iscsi.one.objects import Datastore, Image, VirtualMachine
from tm_iscsi.one.states import LcmState

DEPLOY = fixtures.folder("04-vm-deploy")
VM0_XML = (DEPLOY / "01-tm-clone.vm.xml").read_text()
DS100_XML = (fixtures.folder("00-datastores") / "ds-100.after-monitor.xml").read_text()
DS101_XML = (fixtures.folder("00-datastores") / "ds-101.after-monitor.xml").read_text()
IMAGE1_XML = (fixtures.folder("19-image-snapshots-persistent") / "image-1.before.xml").read_text()


@pytest.fixture
def oned():
    with OnedStandIn() as standin:
        for xml in (VM0_XML, DS100_XML, DS101_XML, IMAGE1_XML):
            standin.put_xml(xml)
        yield standin


@pytest.fixture
def one(oned):
    return OneClient(oned.endpoint, oned.session, timeout=5)


# -------------------------------------------------------------------------------------------
# Resolution
# -------------------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path):
    home = tmp_path / "home"
    oneadmin = tmp_path / "oneadmin-one"
    (home / ".one").mkdir(parents=True)
    oneadmin.mkdir()
    return home, oneadmin


def test_endpoint_precedence(dirs):
    home, oneadmin = dirs
    env = {"HOME": str(home)}
    assert resolve_endpoint(env, str(oneadmin)) == "http://localhost:2633/RPC2"
    (oneadmin / "one_endpoint").write_text("http://oned-oneadmin:2633/RPC2\n")
    assert resolve_endpoint(env, str(oneadmin)) == "http://oned-oneadmin:2633/RPC2"
    (home / ".one" / "one_endpoint").write_text("http://oned-home:2633/RPC2  \n")
    assert resolve_endpoint(env, str(oneadmin)) == "http://oned-home:2633/RPC2"
    env["ONE_XMLRPC"] = "http://oned-env:2633/RPC2\n"
    assert resolve_endpoint(env, str(oneadmin)) == "http://oned-env:2633/RPC2"
    env["ONE_XMLRPC"] = ""
    assert resolve_endpoint(env, str(oneadmin)) == "http://oned-home:2633/RPC2"
    assert resolve_endpoint({}, str(oneadmin)) == "http://oned-oneadmin:2633/RPC2"


def test_session_precedence(dirs, tmp_path):
    home, oneadmin = dirs
    env = {"HOME": str(home)}
    with pytest.raises(OneConfigError) as err:
        resolve_session(env, str(oneadmin))
    assert str(err.value).startswith("no OpenNebula credentials: set ONE_AUTH")
    (oneadmin / "one_auth").write_text("oneadmin:from-var-lib\n")
    assert resolve_session(env, str(oneadmin)) == "oneadmin:from-var-lib"
    (home / ".one" / "one_auth").write_text("oneadmin:from-home")
    assert resolve_session(env, str(oneadmin)) == "oneadmin:from-home"
    auth = tmp_path / "auth"
    auth.write_text("serveradmin:from-env\n\n")
    env["ONE_AUTH"] = str(auth)
    assert resolve_session(env, str(oneadmin)) == "serveradmin:from-env"
    # Like the OCA: a ONE_AUTH that is not a file is skipped, not an error.
    env["ONE_AUTH"] = str(tmp_path / "missing")
    assert resolve_session(env, str(oneadmin)) == "oneadmin:from-home"
    env["ONE_AUTH"] = str(tmp_path)
    assert resolve_session(env, str(oneadmin)) == "oneadmin:from-home"


def test_empty_credentials_file_is_an_error(dirs):
    home, oneadmin = dirs
    (home / ".one" / "one_auth").write_text("\n")
    with pytest.raises(OneConfigError) as err:
        resolve_session({"HOME": str(home)}, str(oneadmin))
    assert "is empty" in str(err.value)


def test_timeout_resolution():
    assert resolve_timeout({}) == one_client.DEFAULT_TIMEOUT
    assert resolve_timeout({"ONE_XMLRPC_TIMEOUT": "7"}) == 7.0
    for bad in ("soon", "0", "-3"):
        with pytest.raises(OneConfigError):
            resolve_timeout({"ONE_XMLRPC_TIMEOUT": bad})


def test_non_http_endpoint_is_refused():
    with pytest.raises(OneConfigError) as err:
        OneClient("localhost:2634", "a:b")
    assert "not an http(s) XML-RPC URL" in str(err.value)


# -------------------------------------------------------------------------------------------
# Calls through pyone
# -------------------------------------------------------------------------------------------


def test_info_calls_return_the_views_over_the_xml_oned_sent(one):
    vm = one.vm_info(0)
    assert isinstance(vm, VirtualMachine)
    assert vm.xml == VM0_XML  # byte for byte: pyone's bindings are not in the way
    assert vm.state_name == "ACTIVE/PROLOG"
    ds = one.datastore_info(100)
    assert isinstance(ds, Datastore) and ds.xml == DS100_XML and ds.vg_name == "vg-one-100"
    assert one.datastore_info(101).is_system
    image = one.image_info(1)
    assert isinstance(image, Image) and image.xml == IMAGE1_XML and len(image.snapshots) == 3
    assert one.system_version() == "7.4.0"


def test_from_environment_uses_the_ruby_oca_order(oned, tmp_path):
    env = oned.env(tmp_path)
    env["HOME"] = str(tmp_path / "nohome")
    one = OneClient.from_environment(env, oneadmin_dir=str(tmp_path / "none"))
    assert one.endpoint == oned.endpoint
    assert one.vm_info(0).id == 0
    assert oned.calls[-1] == ("one.vm.info", (0,))


def test_module_functions_use_one_client_from_the_environment(oned, tmp_path, monkeypatch):
    for name, value in oned.env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(one_client, "_default_client", None)
    assert one_client.vm_info(0).id == 0
    assert one_client.datastore_info(101).id == 101
    assert one_client.image_info(1).id == 1
    assert one_client.default_client() is one_client.default_client()


def test_edits_in_oned_are_seen(oned, one):
    oned.edit("vm", 0, "LCM_STATE", int(LcmState.EPILOG_UNDEPLOY))
    oned.edit("vm", 0, "HISTORY_RECORDS/HISTORY[last()]/HOSTNAME", "host2")
    vm = one.vm_info(0)
    assert vm.lcm_state == LcmState.EPILOG_UNDEPLOY
    assert vm.current_history.hostname == "host2"


def test_missing_objects(one):
    with pytest.raises(OnedNoSuchObject) as err:
        one.vm_info(42)
    assert str(err.value) == "[one.vm.info] Error getting virtual machine [42]."
    assert err.value.code == NO_EXISTS
    with pytest.raises(OnedNoSuchObject):
        one.image_info(9)
    with pytest.raises(OnedNoSuchObject) as err:
        one.datastore_info(7)
    assert str(err.value) == "[one.datastore.info] Error getting datastore [7]."


def test_wrong_credentials(oned):
    with pytest.raises(OnedAuthError) as err:
        OneClient(oned.endpoint, "oneadmin:wrong").vm_info(0)
    assert "User couldn't be authenticated" in str(err.value)
    assert err.value.code == 0x100


def test_other_oned_errors_keep_their_code(oned, one):
    oned.fail("one.vm.info", INTERNAL, "[one.vm.info] Internal error\nwith two lines")
    with pytest.raises(OnedError) as err:
        one.vm_info(0)
    assert str(err.value) == "[one.vm.info] Internal error with two lines"
    assert err.value.code == INTERNAL
    assert one.vm_info(0).id == 0  # the injected failure was one-shot


def test_unreachable_oned_is_reported_at_once(oned):
    endpoint = oned.endpoint
    oned.stop()
    started = time.monotonic()
    with pytest.raises(OnedUnreachable) as err:
        OneClient(endpoint, "a:b", timeout=5).vm_info(0)
    assert time.monotonic() - started < 2
    assert str(err.value) == "cannot reach oned at %s: Connection refused" % endpoint


def test_a_hung_oned_times_out(oned):
    oned.delay("one.vm.info", 10)
    one = OneClient(oned.endpoint, oned.session, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(OnedUnreachable) as err:
        one.vm_info(0)
    assert time.monotonic() - started < 3
    assert "did not answer one.vm.info(0) within 0.5s" in str(err.value)


def test_http_errors_are_unreachable(oned):
    with pytest.raises(OnedUnreachable) as err:
        OneClient(oned.endpoint.replace("/RPC2", "/nowhere"), oned.session).vm_info(0)
    assert "answered HTTP 404" in str(err.value)


def test_reply_for_another_object_is_refused(oned, one):
    oned.put_xml(VM0_XML.replace("<ID>0</ID>", "<ID>3</ID>", 1))
    oned.edit("vm", 3, "ID", "0")
    with pytest.raises(OnedError) as err:
        one.vm_info(3)
    assert str(err.value) == "oned answered a request for id 3 with object 0"


def test_reply_that_is_not_the_expected_document(oned, one, mocker):
    mocker.patch.object(one._server, "_do_request", return_value=[True, "<IMAGE><ID>0</ID></IMAGE>", 0])
    with pytest.raises(BadXml):
        one.vm_info(0)
    mocker.patch.object(one._server, "_do_request", return_value=[True, 17, 0])
    with pytest.raises(OnedError) as err:
        one.vm_info(0)
    assert "not XML" in str(err.value)
    mocker.patch.object(one._server, "_do_request", return_value="garbage")
    with pytest.raises(OnedUnreachable):
        one.vm_info(0)


def test_allocate_image_and_hook(oned, one):
    image_id = one.image_allocate('NAME="saved-disk"\nTYPE="OS"\nPATH="/dev/null"', 100)
    assert image_id == 2  # after the registered image 1
    assert one.image_info(image_id).name == "saved-disk"
    assert oned.allocated_images == [(2, 'NAME="saved-disk"\nTYPE="OS"\nPATH="/dev/null"', 100)]
    # pyone renders a flat dict as KEY="VALUE" lines
    second = one.image_allocate({"NAME": "from-dict", "TYPE": "DATABLOCK"}, 100)
    assert oned.allocated_images[-1] == (second, 'NAME="from-dict"\nTYPE="DATABLOCK"\n', 100)
    hook = one.hook_allocate({"NAME": "iscsi-fence", "TYPE": "state", "COMMAND": "fence", "RESOURCE": "HOST",
                              "STATE": "ERROR"})
    assert hook == 0 and 'COMMAND="fence"' in oned.allocated_hooks[0][1]


def test_allocation_errors(oned, one):
    with pytest.raises(OnedNoSuchObject) as err:
        one.image_allocate('NAME="x"', 555)
    assert str(err.value) == "[one.image.allocate] Error getting datastore [555]."
    with pytest.raises(OnedError) as err:
        one.image_allocate('TYPE="OS"', 100)
    assert err.value.code == ACTION
    with pytest.raises(OnedError):
        one.hook_allocate('NAME="no-command"')


def test_concurrent_calls(one):
    results = []

    def fetch():
        results.append(one.vm_info(0).id)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0] * 8


def test_the_chap_secret_is_read_decrypted_as_oned_hands_it_to_an_admin(oned, one):
    """oned keeps DATASTORE_ENCRYPTED_ATTR values encrypted; one.datastore.info gives them in
    clear only when asked to decrypt. The stand-in does the same, and the driver asks."""
    import xml.etree.ElementTree as ET
    import xmlrpc.client

    def secret(root):
        ET.SubElement(root.find("TEMPLATE"), "ISCSI_CHAP_PASSWORD").text = "s3cret-chap"
    oned.edit_with("datastore", 100, secret)
    proxy = xmlrpc.client.ServerProxy(oned.endpoint)
    plain = proxy.one.datastore.info(oned.session, 100)[1]
    assert "s3cret-chap" not in plain and "<ISCSI_CHAP_PASSWORD>" in plain
    assert "s3cret-chap" not in proxy.one.datastorepool.info(oned.session)[1]
    assert one.datastore_info(100).template_attr("ISCSI_CHAP_PASSWORD") == "s3cret-chap"
    assert ("one.datastore.info", (100, True)) in oned.calls
