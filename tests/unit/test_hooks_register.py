"""Registering the three hooks with oned through pyone, once; and recording the hosts' initiator
names (ISCSI_INITIATOR) that fencing needs when a host is down."""
import json

import pytest

from tm_iscsi.errors import DriverError
from vmm_hooks import cli, register

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, HOST2_IQN, cloud, host_xml, nodes, oned, runner)

COMMAND = "/opt/tm_iscsi-venv/bin/tm-iscsi-hook"

FENCE = '''NAME = "tm_iscsi-fence"
TYPE = "state"
COMMAND = "/opt/tm_iscsi-venv/bin/tm-iscsi-hook"
ARGUMENTS = "fence $TEMPLATE"
RESOURCE = "HOST"
STATE = "ERROR"
REMOTE = "NO"
TIMEOUT = "300"
'''
LEFTOVERS = '''NAME = "tm_iscsi-leftovers"
TYPE = "state"
COMMAND = "/opt/tm_iscsi-venv/bin/tm-iscsi-hook"
ARGUMENTS = "leftovers $TEMPLATE"
RESOURCE = "VM"
STATE = "DONE"
LCM_STATE = "LCM_INIT"
REMOTE = "NO"
TIMEOUT = "600"
'''
PLACE = '''NAME = "tm_iscsi-place"
TYPE = "state"
COMMAND = "/opt/tm_iscsi-venv/bin/tm-iscsi-hook"
ARGUMENTS = "place $TEMPLATE"
RESOURCE = "VM"
STATE = "PENDING"
LCM_STATE = "LCM_INIT"
REMOTE = "NO"
TIMEOUT = "30"
'''
# one.hook.allocate reads a VM hook's condition from ON only (CUSTOM: STATE and LCM_STATE).
LEFTOVERS_ALLOCATE = LEFTOVERS + 'ON = "CUSTOM"\n'
PLACE_ALLOCATE = PLACE + 'ON = "CUSTOM"\n'


def test_the_hook_templates_oned_gets():
    rendered = {name: register.render(attrs)
                for name, attrs in register.templates(COMMAND).items()}
    assert rendered == {"tm_iscsi-fence": FENCE, "tm_iscsi-leftovers": LEFTOVERS,
                        "tm_iscsi-place": PLACE}
    cleaning = register.templates(COMMAND, clean_leftovers=True)["tm_iscsi-leftovers"]
    assert cleaning["ARGUMENTS"] == "leftovers $TEMPLATE --clean"


def test_register_allocates_every_hook_once(cloud, oned, capsys):
    assert cli.main(["register", "--command", COMMAND, "--no-initiators"], cloud=cloud) == 0
    assert [t for _i, t in oned.allocated_hooks] == [FENCE, LEFTOVERS_ALLOCATE, PLACE_ALLOCATE]
    assert capsys.readouterr().out.split() == [
        "HOOK", "ID", "ACTION", "tm_iscsi-fence", "0", "created",
        "tm_iscsi-leftovers", "1", "created", "tm_iscsi-place", "2", "created"]
    assert cli.main(["register", "--command", COMMAND, "--no-initiators"], cloud=cloud) == 0
    assert len(oned.allocated_hooks) == 3
    assert "unchanged" in capsys.readouterr().out
    assert [m for m, _p in oned.calls].count("one.hook.update") == 0


def test_a_hook_registered_by_hand_with_other_values_is_updated_in_place(cloud, oned, capsys):
    oned.put_document("<HOOK><ID>7</ID><NAME>tm_iscsi-fence</NAME><TYPE>state</TYPE><TEMPLATE>"
                      "<COMMAND>/usr/local/bin/old</COMMAND><ARGUMENTS>fence $TEMPLATE"
                      "</ARGUMENTS><RESOURCE>host</RESOURCE><STATE>error</STATE><REMOTE>no"
                      "</REMOTE><TIMEOUT>300</TIMEOUT></TEMPLATE></HOOK>")
    assert cli.main(["register", "--command", COMMAND, "--no-initiators", "--json"],
                    cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hooks"] == [{"name": "tm_iscsi-fence", "action": "updated", "id": 7},
                             {"name": "tm_iscsi-leftovers", "action": "created", "id": 8},
                             {"name": "tm_iscsi-place", "action": "created", "id": 9}]
    assert ("one.hook.update", (7, FENCE, 0)) in oned.calls
    assert f"<COMMAND>{COMMAND}</COMMAND>" in oned.xml("hook", 7)
    # lower-case values oned users write count as the same
    assert cli.main(["register", "--command", COMMAND, "--no-initiators"], cloud=cloud) == 0
    assert "updated" not in capsys.readouterr().out


def test_dry_run_changes_nothing(cloud, oned, nodes, capsys):
    assert cli.main(["register", "--command", COMMAND, "--dry-run"], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert "created" in out and "(dry run: nothing was changed)" in out
    assert oned.allocated_hooks == []
    assert "ISCSI_INITIATOR" not in oned.xml("host", 0)


def test_the_command_must_be_absolute(cloud, capsys):
    assert cli.main(["register", "--command", "tm-iscsi-hook"], cloud=cloud) == 1
    assert "must be an absolute path" in capsys.readouterr().err
    with pytest.raises(ValueError):
        register.register(None, "bin/hook")


def test_register_records_each_hosts_initiator(cloud, oned, nodes, capsys):
    nodes.answers[("host2", "initiator")] = DriverError("cannot reach host2 over ssh: timeout")
    assert cli.main(["register", "--command", COMMAND], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert f"host1  {HOST1_IQN}  recorded" in out
    assert "host2  -" in out and "unreachable" in out
    assert f"<ISCSI_INITIATOR>{HOST1_IQN}</ISCSI_INITIATOR>" in oned.xml("host", 0)
    assert "ISCSI_INITIATOR" not in oned.xml("host", 1)


def test_record_initiators_changes_only_what_differs(cloud, oned, nodes, capsys):
    oned.put_document(host_xml(0, "host1", initiator=HOST1_IQN))
    oned.put_document(host_xml(1, "host2", initiator="iqn.2000-01.old:host2"))
    assert cli.main(["record-initiators", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["initiators"] == [
        {"host": "host1", "initiator": HOST1_IQN, "action": "unchanged"},
        {"host": "host2", "initiator": HOST2_IQN, "action": "recorded"}]
    updates = [p for m, p in oned.calls if m == "one.host.update"]
    assert updates == [(1, f'ISCSI_INITIATOR = "{HOST2_IQN}"', 1)]


def test_record_initiators_of_named_hosts_and_unreachable_ones_fail(cloud, nodes, capsys):
    nodes.answers[("host2", "initiator")] = DriverError("host2: no route")
    assert cli.main(["record-initiators", "host2"], cloud=cloud) == 1
    assert [h for h, _c in nodes.commands()] == ["host2"]


def test_the_installed_hook_is_found_next_to_python(tmp_path, monkeypatch):
    script = tmp_path / "tm-iscsi-hook"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(register.sys, "executable", str(tmp_path / "python3"))
    assert register.hook_command() == str(script)


def test_a_second_register_is_accepted_as_oned_7_4_stores_hooks(cloud, oned, capsys):
    """oned keeps a VM hook as STATE + LCM_STATE without ON and refuses an update without them
    (HookStateVM::post_update_template): the stand-in does the same."""
    assert cli.main(["register", "--command", COMMAND, "--no-initiators"], cloud=cloud) == 0
    stored = oned.xml("hook", 1)
    assert "<STATE>DONE</STATE>" in stored and "<LCM_STATE>LCM_INIT</LCM_STATE>" in stored
    assert "<ON>" not in stored
    # A changed command: all are updated, and oned accepts every template.
    assert cli.main(["register", "--command", "/usr/bin/tm-iscsi-hook", "--no-initiators"],
                    cloud=cloud) == 0
    out = capsys.readouterr().out
    assert out.count("updated") == 3, out
    assert "<COMMAND>/usr/bin/tm-iscsi-hook</COMMAND>" in oned.xml("hook", 1)
    assert cli.main(["register", "--command", "/usr/bin/tm-iscsi-hook", "--no-initiators"],
                    cloud=cloud) == 0
    assert capsys.readouterr().out.count("unchanged") == 3


def test_the_stand_in_refuses_what_oned_refuses_of_a_hook_update(oned):
    import xmlrpc.client
    proxy = xmlrpc.client.ServerProxy(oned.endpoint)
    ok, hook_id, _ = proxy.one.hook.allocate(oned.session, LEFTOVERS_ALLOCATE)
    assert ok
    old = LEFTOVERS.replace('ON = "DONE"', '')
    ok, message, _ = proxy.one.hook.update(oned.session, hook_id, old.replace(
        'STATE = "DONE"\nLCM_STATE = "LCM_INIT"\n', 'ON = "DONE"\n'), 0)
    assert not ok and "The STATE attribute is not defined or it's invalid." in message
    ok, message, _ = proxy.one.hook.allocate(oned.session, LEFTOVERS.replace('STATE = "DONE"\nLCM_STATE = '
                                                                   '"LCM_INIT"\n', ''))
    assert not ok and "Unkown state condition" in message
