"""The HOST ERROR hook: which initiator is revoked (recorded in oned, else found in the ACLs of
the host's VMs' disks), on which storage nodes, and what it prints; idempotent; refuses a host
that is not in ERROR and a $TEMPLATE that is not a HOST."""
import base64
import json

import pytest

from tm_iscsi.errors import DriverError
from vmm_hooks import cli, fence
from vmm_hooks.template import decode

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, HOST2_IQN, cloud, host_xml, iqn, nodes, oned, runner, target, vm_xml)


def b64(xml):
    return base64.b64encode(xml.encode()).decode()


@pytest.fixture
def failed_host1(oned, nodes):
    """host1 in ERROR running VM 0; storage exports VM 0's disks to host1 and a disk of VM 5 to
    host2."""
    oned.put_document(host_xml(0, "host1", state=3, vm_ids=(0,)))
    oned.put_xml(vm_xml(0))
    oned.put_xml(vm_xml(5, hosts=("host2",), disks=(0,)))
    nodes.answers["exports"] = {"targets": [
        target("vm-0-disk-0", HOST1_IQN), target("img-1", HOST1_IQN),
        target("vm-5-disk-0", HOST2_IQN)]}
    nodes.answers["fence"] = lambda host, args: {"initiator": args[1], "targets": [
        iqn("vm-0-disk-0"), iqn("img-1")] if args[1] == HOST1_IQN else []}
    return oned


def test_fence_from_the_hook_template_infers_revokes_and_records(cloud, failed_host1, nodes,
                                                                 capsys):
    code = cli.main(["fence", b64(failed_host1.xml("host", 0))], cloud=cloud)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert nodes.calls[-1] == ("storage", "fence", ("--initiator", HOST1_IQN))
    assert ("host1", "initiator") not in nodes.commands()   # the host is never asked
    assert out.splitlines() == [
        f"host1: initiator {HOST1_IQN} (from the ACLs of its VMs' disks)",
        f"host1: recorded ISCSI_INITIATOR={HOST1_IQN} in oned",
        f"storage: revoked {HOST1_IQN} on 2 target(s):",
        f"  {iqn('vm-0-disk-0')}", f"  {iqn('img-1')}"]
    assert f"<ISCSI_INITIATOR>{HOST1_IQN}</ISCSI_INITIATOR>" in failed_host1.xml("host", 0)


def test_a_recorded_initiator_is_used_as_is_and_a_second_fence_revokes_nothing(
        cloud, failed_host1, nodes, capsys):
    failed_host1.put_document(host_xml(0, "host1", state=3, vm_ids=(0,), initiator=HOST1_IQN))
    nodes.answers["fence"] = {"targets": []}
    assert cli.main(["fence", "--host", "host1"], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert "from ISCSI_INITIATOR of the host in oned" in out
    assert f"storage: {HOST1_IQN} has no ACL left (already fenced)" in out
    assert nodes.commands() == [("storage", "fence")]   # no exports needed


def test_fence_json(cloud, failed_host1, capsys):
    assert cli.main(["fence", "--host", "0", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"host": "host1", "initiator": HOST1_IQN, "source": "acl", "recorded": True,
                    "revoked": {"storage": [iqn("vm-0-disk-0"), iqn("img-1")]}, "errors": {},
                    "host_lost": None}


def test_a_storage_node_that_cannot_be_reached_leaves_the_host_not_fenced(
        cloud, failed_host1, nodes, capsys):
    failed_host1.put_document(host_xml(0, "host1", state=3, initiator=HOST1_IQN))
    nodes.answers["fence"] = DriverError("cannot reach storage over ssh: Connection refused")
    assert cli.main(["fence", "--host", "host1"], cloud=cloud) == 1
    out, err = capsys.readouterr()
    assert "storage: NOT fenced: cannot reach storage over ssh" in out
    assert err.count("\n") == 1 and "host host1 is NOT fenced on storage" in err


def test_a_host_that_is_not_in_error_is_not_fenced_without_force(cloud, failed_host1, nodes,
                                                                 capsys):
    failed_host1.put_document(host_xml(0, "host1", state=2, vm_ids=(0,)))
    assert cli.main(["fence", "--host", "host1"], cloud=cloud) == 1
    assert "host1 is MONITORED now, not in ERROR" in capsys.readouterr().err
    assert nodes.calls == []
    assert cli.main(["fence", "--host", "host1", "--force"], cloud=cloud) == 0


def test_the_state_that_counts_is_oneds_now_not_the_events(cloud, failed_host1, nodes, capsys):
    event = host_xml(0, "host1", state=3)
    failed_host1.put_document(host_xml(0, "host1", state=2))   # it came back meanwhile
    assert cli.main(["fence", b64(event)], cloud=cloud) == 1
    assert nodes.calls == []


def test_a_host_with_nothing_exported_has_nothing_to_revoke(cloud, oned, nodes, capsys):
    oned.put_document(host_xml(1, "host2", state=3))
    assert cli.main(["fence", "--host", "host2"], cloud=cloud) == 0
    assert "nothing to revoke" in capsys.readouterr().out
    assert "fence" not in [c for _h, c in nodes.commands()]


def test_infer_initiator_decisions():
    targets = {iqn("a"), iqn("b")}
    exports = [target("a", HOST1_IQN, HOST2_IQN), target("b", HOST1_IQN), target("c", "x")]
    # a VM mid-migration shares a target with host2; the other target tells them apart
    assert fence.infer_initiator("host1", targets, exports, set()) == HOST1_IQN
    # with only the shared target, the other host's recorded name decides
    assert fence.infer_initiator("host1", {iqn("a")}, exports, {HOST2_IQN}) == HOST1_IQN
    with pytest.raises(DriverError, match="cannot tell which initiator is host1's"):
        fence.infer_initiator("host1", {iqn("a")}, exports, set())
    assert fence.infer_initiator("host1", {iqn("zzz")}, exports, set()) is None


@pytest.mark.parametrize("argument, fragment", [
    ("bm90IHhtbA==", "not valid XML"),
    ("%%%", "neither base64 nor XML"),
    (b64("<VM><ID>1</ID></VM>"), "got a <VM> document, not a <HOST>"),
])
def test_a_template_that_is_not_a_host_is_refused(argument, fragment):
    with pytest.raises(DriverError, match=fragment):
        decode(argument, "HOST")


def test_the_template_may_come_as_xml_or_on_stdin():
    import io
    xml = host_xml(0, "host1")
    assert decode(xml, "HOST") == xml
    assert decode("-", "HOST", stdin=io.StringIO(b64(xml) + "\n")) == xml


def test_usage_errors_are_one_line(cloud, capsys):
    assert cli.main(["fence"], cloud=cloud) == 1
    err = capsys.readouterr().err
    assert err == "tm-iscsi-hook: give the host: $TEMPLATE (as oned does) or --host NAME\n"
    assert cli.main(["nope"], cloud=cloud) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'nope'" in err
