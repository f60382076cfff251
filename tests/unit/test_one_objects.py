"""objects: the VM / Datastore / Image views over the XML oned 7.4.0 actually produced."""

import xml.etree.ElementTree as ET

import pytest

from harness import fixtures
from tm_iscsi.one.errors import BadAttribute, BadXml, MissingAttribute
from tm_iscsi.one.objects import CACHE_MODES, Datastore, Image, VirtualMachine
from tm_iscsi.one.states import DatastoreType, ImageState, ImageType, LcmState, VmState

TM_CALLS = fixtures.calls("tm")
VM_CALLS = [c for c in TM_CALLS if c.file(".vm.xml")]
DS_CALLS = [c for c in TM_CALLS if c.file(".ds.xml")]


def _fixture_files(pattern):
    return sorted(fixtures.fixtures_root().glob(pattern))


def _vm_file(folder, name):
    return VirtualMachine.from_xml((fixtures.folder(folder) / name).read_text())


def _edited(xml, path, value=None, remove=False):
    root = ET.fromstring(xml)
    if remove:
        parent = root.find(path.rpartition("/")[0]) if "/" in path else root
        parent.remove(root.find(path))
    else:
        root.find(path).text = value
    return ET.tostring(root, encoding="unicode")


# -------------------------------------------------------------------------------------------
# VM
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", VM_CALLS, ids=lambda c: c.id)
def test_vm_state_names_match_what_onevm_printed(call):
    vm = VirtualMachine.from_xml(call.read(".vm.xml"))
    assert vm.state_name == call.vm_state_at_call
    assert vm.id == int(call.args[-2])
    for disk in vm.disks:
        assert disk.disk_id >= 0
        assert disk.datastore_id in (100, 101)
        assert disk.tm_mad == "iscsi_lvm"
        assert disk.disk_type == "BLOCK"
        assert disk.cache_mode is None  # no override in the captured templates


@pytest.mark.parametrize(
    "path", _fixture_files("*/vm[0-9]*.xml"), ids=lambda p: "%s/%s" % (p.parent.name, p.name)
)
def test_every_vm_document_reads(path):
    vm = VirtualMachine.from_xml(path.read_text())
    assert vm.state in VmState
    assert vm.lcm_state in LcmState
    assert vm.xml == path.read_text()
    if vm.history:
        assert vm.current_history.ds_id == 101
        assert [h.seq for h in vm.history] == sorted(h.seq for h in vm.history)


# The LCM states oned 7.4.0 was in when it called each TM action (README table, folders 04-25).
LCM_BY_OPERATION = [
    ("04-vm-deploy", "clone", LcmState.PROLOG),
    ("04-vm-deploy", "context", LcmState.BOOT),
    ("05-poweroff-resume", "context", LcmState.BOOT_POWEROFF),
    ("06-undeploy-resume", "mv", {LcmState.EPILOG_UNDEPLOY, LcmState.PROLOG_UNDEPLOY}),
    ("06-undeploy-resume", "context", LcmState.BOOT_UNDEPLOY),
    ("07-stop-resume", "mv", {LcmState.EPILOG_STOP, LcmState.PROLOG_RESUME}),
    ("07-stop-resume", "context", LcmState.BOOT_STOPPED),
    ("08-migrate-cold", "mv", LcmState.PROLOG_MIGRATE),
    ("08-migrate-cold", "context", LcmState.BOOT_MIGRATE),
    ("09-migrate-live", "premigrate", LcmState.MIGRATE),
    ("10-disk-snapshots-poweroff", "snap_create", LcmState.DISK_SNAPSHOT_POWEROFF),
    ("10-disk-snapshots-poweroff", "snap_revert", LcmState.DISK_SNAPSHOT_REVERT_POWEROFF),
    ("10-disk-snapshots-poweroff", "snap_delete", LcmState.DISK_SNAPSHOT_DELETE_POWEROFF),
    ("11-disk-saveas-snapshot-poweroff", "cpds", LcmState.HOTPLUG_SAVEAS_POWEROFF),
    ("12-disk-saveas-running", "cpds", LcmState.HOTPLUG_SAVEAS),
    ("13-disk-resize-poweroff", "resize", LcmState.DISK_RESIZE_POWEROFF),
    ("14-disk-resize-running", "resize", LcmState.DISK_RESIZE),
    ("15-disk-hotplug-running", "clone", LcmState.HOTPLUG),
    ("16-disk-hotplug-poweroff", "clone", LcmState.HOTPLUG_PROLOG_POWEROFF),
    ("16-disk-hotplug-poweroff", "delete", LcmState.HOTPLUG_EPILOG_POWEROFF),
    ("17-terminate", "mvds", LcmState.EPILOG),
    ("18-terminate-undeployed", "mvds", LcmState.EPILOG),
    ("20-recover-delete-prolog-failure", "delete", LcmState.LCM_INIT),
]


@pytest.mark.parametrize("folder,action,expected", LCM_BY_OPERATION, ids=lambda v: getattr(v, "name", str(v)))
def test_lcm_state_numbers_per_operation(folder, action, expected):
    states = {
        VirtualMachine.from_xml(c.read(".vm.xml")).lcm_state
        for c in VM_CALLS
        if c.folder == folder and c.action == action
    }
    assert states == (expected if isinstance(expected, set) else {expected})


def test_deployed_vm_disks():
    vm = VirtualMachine.from_xml(fixtures.calls("tm")[0].read(".vm.xml"))  # 04 clone
    os_disk, data, volatile_fs, swap = vm.disks
    assert (os_disk.clone, os_disk.persistent, os_disk.save) == (True, False, False)
    assert (os_disk.source, os_disk.image_id, os_disk.image_name) == ("vg-one-100/img-0", 0, "os-base")
    assert (os_disk.size_mb, os_disk.original_size_mb, os_disk.format) == (64, 64, "raw")
    assert not os_disk.readonly and not os_disk.is_volatile and not os_disk.is_cdrom
    assert (data.clone, data.persistent, data.save) == (False, True, True)
    assert data.iscsi_host == "storage"  # INHERIT_DATASTORE_ATTR carries ISCSI_HOST
    assert volatile_fs.is_volatile and (volatile_fs.type, volatile_fs.fs, volatile_fs.size_mb) == ("fs", "ext4", 512)
    assert volatile_fs.source is None and volatile_fs.image_id is None
    assert swap.is_volatile and (swap.type, swap.size_mb, swap.datastore_id) == ("swap", 256, 101)
    assert vm.context_disk_id == 4
    assert vm.tm_mad_system == "iscsi_lvm"
    assert vm.user_template_attr("SCHED_DS_REQUIREMENTS") == "ID=101"
    assert vm.require_user_template_attr("SCHED_REQUIREMENTS") == "ID=0"
    assert vm.user_template_attr("NOPE") is None
    history = vm.current_history
    assert (history.hostname, history.host_id, history.ds_id, history.seq) == ("host1", 0, 101, 0)
    assert (history.tm_mad, history.vm_mad, history.action_name) == ("iscsi_lvm", "probevmm", "none")
    assert vm.previous_history is None


def test_live_migration_history_on_stdin_has_only_the_newest_record():
    call = next(c for c in VM_CALLS if c.folder.startswith("09-") and c.action == "premigrate")
    full = VirtualMachine.from_xml(call.read(".vm.xml"))
    sent = VirtualMachine.from_xml(call.read(".stdin.xml"))
    assert [h.hostname for h in full.history][-2:] == ["host2", "host1"]
    assert full.previous_history.action_name == "live-migrate"
    assert len(sent.history) == 1 and sent.previous_history is None
    assert sent.current_history.hostname == "host1"
    assert sent.lcm_state == LcmState.MIGRATE
    assert sent.deploy_id == "probe-0"


def test_undeployed_vm_epilog_history_still_names_the_old_host():
    call = next(c for c in VM_CALLS if c.folder.startswith("18-") and c.action == "mvds")
    vm = VirtualMachine.from_xml(call.read(".vm.xml"))
    assert call.args[0].startswith("frontend:")
    assert vm.current_history.hostname == "host1"
    assert vm.current_history.action_name == "terminate"
    # Nothing in the VM says "undeployed" any more (PREV_* already read ACTIVE/EPILOG): only the
    # front-end host on argv differing from the last history host tells (tm_common's is_undeployed).
    assert (vm.prev_state, vm.prev_lcm_state) == (VmState.ACTIVE, LcmState.EPILOG)


def test_recover_delete_runs_on_a_done_vm():
    call = next(c for c in VM_CALLS if c.folder.startswith("20-") and c.action == "delete")
    vm = VirtualMachine.from_xml(call.read(".vm.xml"))
    assert (vm.state, vm.lcm_state) == (VmState.DONE, LcmState.LCM_INIT)
    assert vm.current_history.action_name == "delete"


def test_vm_error_attribute_after_a_failed_prolog():
    vm = _vm_file("20-recover-delete-prolog-failure", "vm2.prolog-failure.xml")
    assert vm.lcm_state == LcmState.PROLOG_FAILURE
    assert "Error executing image transfer script: iscsi_lvm clone: injected failure" in vm.error


def test_disk_snapshots_of_a_vm():
    vm = _vm_file("10-disk-snapshots-poweroff", "vm0.after.xml")
    assert [(s.id, s.name, s.active) for s in vm.disk_snapshots(0)] == [(0, "s0", True)]
    assert [(s.id, s.name, s.active) for s in vm.disk_snapshots(1)] == [(0, "p0", False), (1, "p1", False), (2, "p2", True)]
    assert vm.disk_snapshots(3) == ()


def test_hotplug_and_resize_marks():
    attach = next(c for c in VM_CALLS if c.folder.startswith("15-") and c.action == "clone")
    disk = VirtualMachine.from_xml(attach.read(".vm.xml")).disk(5)
    assert disk.attaching and disk.tm_mad_system == "iscsi_lvm"
    resize = next(c for c in VM_CALLS if c.folder.startswith("13-") and c.action == "resize")
    disk = VirtualMachine.from_xml(resize.read(".vm.xml")).disk(0)
    assert disk.resizing and (disk.size_prev_mb, disk.size_mb) == (64, 128)


def test_missing_disk_and_missing_attributes_are_one_line_errors():
    vm = VirtualMachine.from_xml(VM_CALLS[0].read(".vm.xml"))
    with pytest.raises(MissingAttribute) as err:
        vm.disk(9)
    assert str(err.value) == "VM 0 has no DISK with DISK_ID=9"
    with pytest.raises(MissingAttribute) as err:
        vm.disk(2).require_source()
    assert str(err.value) == "VM 0 disk 2 has no SOURCE (not an image disk?)"
    assert (err.value.kind, err.value.object_id, err.value.attribute) == ("VM 0 disk", "2", "SOURCE")
    with pytest.raises(MissingAttribute) as err:
        vm.disk(0).require_attr("LUN")
    assert str(err.value) == "VM 0 disk 0 has no LUN"


def test_vm_without_history_or_id():
    xml = VM_CALLS[0].read(".vm.xml")
    no_history = VirtualMachine.from_xml(_edited(xml, "HISTORY_RECORDS/HISTORY", remove=True))
    with pytest.raises(MissingAttribute) as err:
        no_history.current_history
    assert "VM 0 has no HISTORY_RECORDS/HISTORY" in str(err.value)
    no_id = VirtualMachine.from_xml(_edited(xml, "ID", remove=True))
    with pytest.raises(MissingAttribute) as err:
        no_id.id
    assert str(err.value) == "VM has no ID"


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("LCM_STATE", "99", "VM 0: LCM_STATE='99' is not an LCM state this driver knows"),
        ("STATE", "three", "VM 0: STATE='three' is not an integer"),
        ("TEMPLATE/DISK/CLONE", "MAYBE", "VM 0 disk 0: CLONE='MAYBE' is not YES or NO"),
        ("TEMPLATE/DISK/SIZE", "64M", "VM 0 disk 0: SIZE='64M' is not an integer"),
    ],
)
def test_unusable_values_are_one_line_errors(path, value, fragment):
    vm = VirtualMachine.from_xml(_edited(VM_CALLS[0].read(".vm.xml"), path, value))
    with pytest.raises(BadAttribute) as err:
        vm.lcm_state, vm.state, vm.disks[0].clone, vm.disks[0].size_mb
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", CACHE_MODES + ("READ+WRITEBACK",))
def test_cache_mode_override_on_a_disk(mode):
    root = ET.fromstring(VM_CALLS[0].read(".vm.xml"))
    ET.SubElement(root.find("TEMPLATE/DISK"), "CACHE_MODE").text = mode
    vm = VirtualMachine(root)
    assert vm.disks[0].cache_mode == mode.lower()
    assert vm.disks[1].cache_mode is None


def test_unknown_cache_mode_is_refused():
    root = ET.fromstring(VM_CALLS[0].read(".vm.xml"))
    ET.SubElement(root.find("TEMPLATE/DISK"), "CACHE_MODE").text = "writethrough"
    with pytest.raises(BadAttribute) as err:
        VirtualMachine(root).disks[0].cache_mode
    assert "CACHE_MODE='writethrough' is not one of none, read, writeback, read+writeback" in str(err.value)


@pytest.mark.parametrize(
    "xml,fragment",
    [
        ("<VM><ID>1</ID>", "VM XML is not valid XML"),
        ("<IMAGE><ID>1</ID></IMAGE>", "VM XML has root <IMAGE>, expected <VM>"),
        ("", "VM XML is not valid XML"),
    ],
)
def test_malformed_documents(xml, fragment):
    with pytest.raises(BadXml) as err:
        VirtualMachine.from_xml(xml)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------
# Datastore
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", DS_CALLS, ids=lambda c: c.id)
def test_datastore_documents_of_every_tm_call(call):
    ds = Datastore.from_xml(call.read(".ds.xml"))
    assert ds.id == int(call.args[-1])
    assert ds.tm_mad == "iscsi_lvm"
    assert ds.iscsi_host == "storage"
    assert ds.base_path == "/var/lib/one//datastores/%d" % ds.id
    assert ds.cluster_ids == (0,)


def test_image_datastore():
    ds = Datastore.from_xml((fixtures.folder("00-datastores") / "ds-100.after-monitor.xml").read_text())
    assert (ds.id, ds.name, ds.type, ds.is_system) == (100, "iscsi_lvm_images", DatastoreType.IMAGE_DS, False)
    assert (ds.ds_mad, ds.tm_mad) == ("iscsi_lvm", "iscsi_lvm")
    assert (ds.vg_name, ds.bridge_list, ds.cache_mode) == ("vg-one-100", ("storage",), "read+writeback")
    assert (ds.total_mb, ds.free_mb, ds.used_mb) == (102400, 101376, 1024)
    assert ds.disk_type == 2 and ds.template_attr("DISK_TYPE") == "BLOCK"
    assert ds.require_template_attr("LN_TARGET") == "NONE"
    assert ds.template_attr("CHAP_USER") is None


def test_system_datastore():
    ds = Datastore.from_xml((fixtures.folder("00-datastores") / "ds-101.after-monitor.xml").read_text())
    assert (ds.type, ds.is_system, ds.ds_mad) == (DatastoreType.SYSTEM_DS, True, None)
    assert ds.shared and ds.cache_mode is None and ds.bridge_list == ()
    with pytest.raises(MissingAttribute) as err:
        ds.vg_name
    assert str(err.value) == "datastore 101 has no TEMPLATE/VG_NAME"


def test_datastore_without_iscsi_host():
    xml = (fixtures.folder("00-datastores") / "ds-100.after-monitor.xml").read_text()
    ds = Datastore.from_xml(_edited(xml, "TEMPLATE/ISCSI_HOST", remove=True))
    with pytest.raises(MissingAttribute) as err:
        ds.iscsi_host
    assert str(err.value) == "datastore 100 has no TEMPLATE/ISCSI_HOST"


# -------------------------------------------------------------------------------------------
# Image
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _fixture_files("*/image-*.xml"), ids=lambda p: "%s/%s" % (p.parent.name, p.name))
def test_every_image_document_reads(path):
    image = Image.from_xml(path.read_text())
    # Backup images (folders 27-30) live in the backup datastore 102, every other in 100.
    assert image.datastore_id == (102 if image.type == ImageType.BACKUP else 100)
    assert image.type in ImageType and image.state in ImageState
    assert image.xml == path.read_text()


def test_persistent_image_with_snapshots():
    image = Image.from_xml((fixtures.folder("19-image-snapshots-persistent") / "image-1.before.xml").read_text())
    assert (image.id, image.name, image.type, image.persistent) == (1, "data-pers", ImageType.DATABLOCK, True)
    assert (image.source, image.path, image.size_mb, image.format, image.fs) == ("vg-one-100/img-1", None, 2048, "raw", "ext4")
    assert image.state == ImageState.READY
    assert image.target_snapshot is None and image.cloning_id is None
    assert [(s.id, s.name, s.parent, s.active, s.size_mb) for s in image.snapshots] == [
        (0, "p0", -1, False, 1024),
        (1, "p1", -1, False, 1024),
        (2, "p2", -1, True, 1024),
    ]
    with pytest.raises(MissingAttribute) as err:
        image.require_target_snapshot()
    assert str(err.value) == "image 1 has no TARGET_SNAPSHOT (no snapshot was selected)"


def test_failed_import_image():
    image = Image.from_xml((fixtures.folder("24-image-create-ds-cp-failure") / "image-5.error.xml").read_text())
    assert image.state == ImageState.ERROR and image.source is None
    assert image.error.endswith("Error copying image in the datastore: iscsi_lvm ds cp: injected failure (args: 5)")
    with pytest.raises(MissingAttribute) as err:
        image.require_source()
    assert str(err.value) == "image 5 has no SOURCE"


def test_saved_image_records_its_origin():
    image = Image.from_xml((fixtures.folder("11-disk-saveas-snapshot-poweroff") / "image-3.after.xml").read_text())
    assert image.source == "vg-one-100/img-3"
    assert image.template_attr("SAVED_VM_ID") == "0" and image.template_attr("SAVED_DISK_ID") == "0"
