"""The storage node's transactions with LVM and LIO replaced by a small in-memory VG: the storage
state each decides from what it reads (base generation, region map, guards), that refusals come
before any change, and that a re-run changes nothing. The lab proves them on the real kernel."""
import io
import json
import sys

import pytest

from tm_iscsi import naming, protocol
from tm_iscsi.node import cli, lio, locks, lvm, lvops, nodeconf

MIB = 1024 * 1024
HOST1 = "iqn.2026-11.lab:host1"


class FakeVG:
    """vgt with a thin pool and tm_iscsi's image img-0 (64 MiB); lvm's change functions edit it."""

    def __init__(self):
        self.lvs = {}
        self.calls = []
        self.add("tpool", 8 << 30, segtype="thin-pool", tags=[], data_percent=10.0,
                 metadata_percent=5.0)
        self.add("img-0", 64 * MIB, tags=["tm_iscsi", "tm_iscsi.kind=image"])

    def add(self, name, size, segtype="thin", tags=("tm_iscsi",), origin="", **extra):
        self.lvs[name] = lvm.LV(vg="vgt", name=name, size_bytes=size, origin=origin,
                                tags=list(tags), attr="Vwi-a-tz--", pool="tpool" if
                                segtype == "thin" else "", segtype=segtype, **extra)

    def report(self, vg, missing_ok=False):
        self.calls.append("report")
        lvs = {n: lvm.LV(**{**lv.__dict__, "tags": list(lv.tags)}) for n, lv in self.lvs.items()}
        return lvm.VGReport("vgt", 20 << 30, 10 << 30, 4 * MIB, lvs)

    def install(self, mocker):
        mocker.patch.object(lvm, "report", side_effect=self.report)
        mocker.patch.object(lvm, "create_snapshot", side_effect=lambda vg, origin, lv, tags=(),
                            pool_active=False: self._change("snapshot", lv) or self.add(
                                lv, self.lvs[origin].size_bytes, tags=tags, origin=origin))
        mocker.patch.object(lvm, "create_thin", side_effect=lambda vg, pool, lv, size, tags=(),
                            pool_active=False: self._change("create", lv) or
                            self.add(lv, size, tags=tags))
        mocker.patch.object(lvm, "change_tags", side_effect=self._tags)
        mocker.patch.object(lvm, "remove", side_effect=lambda vg, *lvs: [self._change(
            "remove", lv) or self.lvs.pop(lv) for lv in lvs])
        mocker.patch.object(lvm, "extend", side_effect=lambda vg, lv, size: self._change(
            "extend", lv) or setattr(self.lvs[lv], "size_bytes", size))
        mocker.patch.object(lvm, "activate")
        self.exports = {}
        mocker.patch.object(lio, "export", side_effect=self._export)
        mocker.patch.object(lio, "unexport", side_effect=self._unexport)
        mocker.patch.object(lio, "save_config",
                            side_effect=lambda changed=None: self.calls.append("save"))
        mocker.patch.object(lio, "users_of_device", side_effect=lambda dev, so=None: [
            (so, sorted(self.exports))] if any(i.endswith(so.split(".", 1)[1])
                                                 for i in self.exports) else [])
        mocker.patch.object(lvops, "fs_type", return_value=None)
        return self

    def _change(self, what, lv):
        self.calls.append(f"{what} {lv}")

    def _tags(self, vg, lv, add=(), delete=()):
        self._change("tags", lv)
        tags = [t for t in self.lvs[lv].tags if t not in delete]
        self.lvs[lv].tags = tags + [t for t in add if t not in tags]

    def _export(self, iqn, backstore, dev, serial, initiator, **kw):
        self.calls.append(f"export {iqn.rsplit('.', 1)[1]}")
        self.exports.setdefault(iqn, set()).add(initiator)
        return {"iqn": iqn, "serial": serial}

    def _unexport(self, iqn, backstore, initiator=None):
        if iqn in self.exports:
            self.calls.append(f"unexport {iqn.rsplit('.', 1)[1]}")
            if initiator is None:
                del self.exports[iqn]
            else:
                self.exports[iqn].discard(initiator)
                if not self.exports[iqn]:
                    del self.exports[iqn]
        return False, []

    def tags(self, lv):
        return set(self.lvs[lv].tags)


@pytest.fixture(autouse=True)
def node_env(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))
    conf = tmp_path_factory.mktemp("etc") / "node.conf"
    conf.write_text(f"ROLES=storage,host\nVG_NAME=vgt\nDATASTORES={tmp_path}\n")
    monkeypatch.setattr(nodeconf, "PATH", str(conf))


@pytest.fixture
def vg(mocker):
    return FakeVG().install(mocker)


def run(capsys, command, request, stdin=None):
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        code = cli.main([command, "--request", protocol.encode(request)])
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def clone_request(mode="read+writeback", host="host1", **disk):
    want = dict(lv="vm-7-disk-0", mode=mode, image_lv="img-0" if protocol.has_read(mode)
                else None, create={"origin": "img-0", "owner": {"kind": "clone", "vm": 7,
                                                                 "disk": 0, "image": 0}})
    want.update(disk)
    return protocol.StorageAttach(vg="vgt", host=host, initiator=HOST1, ds_id=100,
                                  disks=[protocol.StorageDisk(**want)])


def test_a_cached_clone_is_made_with_its_base_map_guard_and_three_exports_in_one_call(vg, capsys):
    code, out, err = run(capsys, "storage-attach", clone_request())
    assert code == 0, err
    (disk,) = out["disks"]
    assert disk["mode"] == "read+writeback" and disk["created"]
    gen = protocol.tag_value(vg.tags("img-0-base"), protocol.BASE_GEN_TAG)
    assert gen and disk["base_key"] == f"vgt.img-0-base.{gen}"
    assert protocol.BASE_GEN_TAG + gen in vg.tags("vm-7-disk-0")
    assert protocol.BASE_GEN_TAG + gen in vg.tags("vm-7-disk-0-map")
    assert protocol.WB_HOST_TAG + "host1" in vg.tags("vm-7-disk-0")
    assert "tm_iscsi.ds=100" in vg.tags("vm-7-disk-0-map")
    assert sorted(disk["luns"]) == ["base", "clone", "map"]
    assert disk["luns"]["clone"]["serial"] == naming.lun_serial("vgt", "vm-7-disk-0")
    # LVM read once; three LVs made with their tags (no tag change after); three exports and
    # the saved LIO config written once.
    assert vg.calls == ["report", "snapshot img-0-base", "snapshot vm-7-disk-0",
                        "create vm-7-disk-0-map", "export vm-7-disk-0", "export img-0-base",
                        "export vm-7-disk-0-map", "save"]


def test_the_same_call_again_changes_nothing_but_the_idempotent_exports(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    first = dict(vg.lvs)
    vg.calls.clear()
    code, out, _ = run(capsys, "storage-attach", clone_request())
    assert code == 0 and not out["disks"][0]["created"]
    assert [c for c in vg.calls if c.split()[0] in ("snapshot", "create", "tags", "remove")] == []
    assert set(vg.lvs) == set(first)


def test_a_second_clone_of_the_image_shares_its_base_generation(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    code, out, _ = run(capsys, "storage-attach", clone_request(lv="vm-8-disk-0"))
    assert code == 0
    gen = protocol.tag_value(vg.tags("img-0-base"), protocol.BASE_GEN_TAG)
    assert protocol.BASE_GEN_TAG + gen in vg.tags("vm-8-disk-0")
    assert out["disks"][0]["mode"] == "read+writeback"
    assert vg.calls.count("snapshot img-0-base") == 1


def test_dirty_data_on_another_host_is_refused_before_any_change(vg, capsys):
    vg.add("vm-7-disk-0", 64 * MIB, tags=["tm_iscsi", protocol.WB_HOST_TAG + "host2"],
           origin="img-0")
    vg.calls.clear()
    code, out, err = run(capsys, "storage-attach", clone_request())
    assert code == 1 and out is None
    assert "unflushed write-back data on host2" in err and len(err.strip().splitlines()) == 1
    assert [c for c in vg.calls if c != "report"] == []


def test_a_stale_map_or_a_retired_base_means_no_read_layer(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    vg.lvs["vm-7-disk-0-map"].tags.append(protocol.STALE_MAP_TAG)
    code, out, _ = run(capsys, "storage-attach", clone_request())
    assert out["disks"][0]["mode"] == "writeback" and sorted(out["disks"][0]["luns"]) == ["clone"]
    vg.lvs["img-0-base"].tags.append(protocol.RETIRED_TAG)
    code, out, _ = run(capsys, "storage-attach", clone_request(lv="vm-9-disk-0", mode="read"))
    assert code == 0 and out["disks"][0]["mode"] == "none"


def test_a_clone_older_than_the_base_gets_no_map(vg, capsys):
    vg.add("img-0-base", 64 * MIB, tags=["tm_iscsi", protocol.BASE_GEN_TAG + "new"],
           origin="img-0")
    vg.add("vm-7-disk-0", 64 * MIB, tags=["tm_iscsi", "tm_iscsi.kind=clone", "tm_iscsi.vm=7",
                                          "tm_iscsi.disk=0", "tm_iscsi.image=0",
                                          "tm_iscsi.ds=100", protocol.BASE_GEN_TAG + "old"],
           origin="img-0")
    code, out, _ = run(capsys, "storage-attach", clone_request(mode="read"))
    assert code == 0 and out["disks"][0]["mode"] == "none"
    assert "vm-7-disk-0-map" not in vg.lvs


def test_a_missing_image_is_one_line_and_nothing_changes(vg, capsys):
    code, _, err = run(capsys, "storage-attach", clone_request(
        create={"origin": "img-5", "owner": {"kind": "clone"}}, mode="none", image_lv=None))
    assert code == 1 and "img-5" in err and "does not exist" in err
    assert [c for c in vg.calls if c != "report"] == []


@pytest.mark.parametrize("change", [
    {"vg": "vg;rm"}, {"host": "-oProxyCommand=x"}, {"initiator": "iqn`id`"},
    {"iqn_base": "iqn.2026-11.x:y"}, {"portal_ip": "storage"}, {"chap_user": "has space"},
])
def test_a_bad_request_field_is_refused_before_lvm_is_read(vg, capsys, change):
    request = clone_request()
    for key, value in change.items():
        setattr(request, key, value)
    code, _, err = run(capsys, "storage-attach", request)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert vg.calls == []


def test_several_requests_run_in_order_with_one_answer_each(vg, capsys):
    second = clone_request(mode="none", lv="vm-7-disk-1")
    code = cli.main(["storage-attach", "--request", protocol.encode(clone_request()),
                     "--request", protocol.encode(second)])
    out, err = capsys.readouterr()
    assert code == 0, err
    answers = json.loads(out)["results"]
    assert [a["disks"][0]["lv"] for a in answers] == ["vm-7-disk-0", "vm-7-disk-1"]
    assert vg.calls.index("snapshot vm-7-disk-0") < vg.calls.index("snapshot vm-7-disk-1")


def test_a_bad_later_request_is_refused_before_the_first_one_runs(vg, capsys):
    bad = clone_request(lv="vm-7-disk-1")
    bad.iqn_base = "iqn.x:not a base"
    code = cli.main(["storage-attach", "--request", protocol.encode(clone_request()),
                     "--request", protocol.encode(bad)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and vg.calls == []


@pytest.mark.parametrize("text", ["{", "[]", '{"vg": "vgt", "host": "h", "disks": [], "x": 1}',
                                  '{"vg": "vgt", "host": "h", "disks": [{"lv": 5}]}',
                                  '{"vg": "vgt", "host": "h", "disks": [{"lv": "a", "mode": "x"}]}'])
def test_a_request_that_is_not_the_protocol_is_one_line(vg, capsys, text):
    code = cli.main(["storage-attach", "--request", text])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and vg.calls == []


def test_release_revokes_removes_the_vm_s_own_and_keeps_the_image(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    vg.add("vm-7-disk-0-snap-0", 64 * MIB, origin="vm-7-disk-0")
    # A backup chain's points go with the disk too.
    vg.add("vm-7-disk-0-backup-3", 64 * MIB, origin="vm-7-disk-0")
    release = protocol.StorageRelease(vg="vgt", host="host1", initiator=HOST1, disks=[
        protocol.ReleaseDisk(lv="vm-7-disk-0", remove=True, release_base_of="img-0")])
    code, out, err = run(capsys, "storage-release", release)
    assert code == 0, err
    assert out["disks"] == [{"lv": "vm-7-disk-0", "removed": True}]
    assert not {"vm-7-disk-0", "vm-7-disk-0-map", "vm-7-disk-0-snap-0",
                "vm-7-disk-0-backup-3"} & set(vg.lvs)
    assert {"img-0", "img-0-base"} <= set(vg.lvs) and vg.exports == {}
    # The disk and what goes with it in one lvremove.
    assert lvm.remove.call_count == 1
    again = run(capsys, "storage-release", release)
    assert again[0] == 0 and again[1]["disks"][0]["removed"] is False


def test_release_of_a_kept_disk_marks_it_pending_once_and_answers_its_size_and_tags(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    keep = protocol.StorageRelease(vg="vgt", host="host1", initiator=HOST1, disks=[
        protocol.ReleaseDisk(lv="vm-7-disk-0", map="forget", keep=True),
        protocol.ReleaseDisk(lv="vm-7-disk-9", keep=True)])
    code, out, err = run(capsys, "storage-release", keep)
    assert code == 0, err
    kept, missing = out["disks"]
    assert kept["exists"] is True and kept["size_bytes"] == vg.lvs["vm-7-disk-0"].size_bytes
    assert protocol.SYNC_PENDING_TAG in kept["tags"]
    assert set(kept["tags"]) == vg.tags("vm-7-disk-0")
    assert missing == {"lv": "vm-7-disk-9", "removed": False, "exists": False}
    # Registered meanwhile: a re-run marks nothing again.
    vg._tags("vgt", "vm-7-disk-0", [protocol.SYNC_IMAGE_TAG + "42"], [protocol.SYNC_PENDING_TAG])
    code, out, err = run(capsys, "storage-release", keep)
    assert code == 0 and protocol.SYNC_PENDING_TAG not in out["disks"][0]["tags"]
    assert protocol.SYNC_PENDING_TAG not in vg.tags("vm-7-disk-0")


def test_a_disk_both_kept_and_removed_is_refused_before_any_change(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    calls = len(vg.calls)
    both = protocol.StorageRelease(vg="vgt", host="host1", initiator=HOST1, disks=[
        protocol.ReleaseDisk(lv="vm-7-disk-0", remove=True, keep=True)])
    code, _, err = run(capsys, "storage-release", both)
    assert code == 2 and "both kept and removed" in err and len(vg.calls) == calls


def test_release_clears_only_this_host_s_guard(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    other = protocol.StorageRelease(vg="vgt", host="host2", initiator=HOST1, disks=[
        protocol.ReleaseDisk(lv="vm-7-disk-0", wb_clear=True)])
    run(capsys, "storage-release", other)
    assert protocol.WB_HOST_TAG + "host1" in vg.tags("vm-7-disk-0")
    mine = protocol.StorageRelease(vg="vgt", host="host1", initiator=HOST1, disks=[
        protocol.ReleaseDisk(lv="vm-7-disk-0", wb_clear=True)])
    run(capsys, "storage-release", mine)
    assert not any(t.startswith(protocol.WB_HOST_TAG) for t in vg.tags("vm-7-disk-0"))


def test_a_live_migration_moves_the_guard_only_from_the_host_that_flushed(vg, capsys):
    run(capsys, "storage-attach", clone_request())
    moved = clone_request(mode="writeback", host="host2", wb_host="host2", wb_from="host1",
                          map="stale")
    code, out, err = run(capsys, "storage-attach", moved)
    assert code == 0, err
    assert protocol.WB_HOST_TAG + "host2" in vg.tags("vm-7-disk-0")
    assert protocol.WB_HOST_TAG + "host1" not in vg.tags("vm-7-disk-0")
    assert protocol.STALE_MAP_TAG in vg.tags("vm-7-disk-0-map")
    stolen = clone_request(mode="writeback", host="host3", wb_host="host3", wb_from="host1")
    code, _, err = run(capsys, "storage-attach", stolen)
    assert code == 1 and "host2" in err


# -- host transactions ---------------------------------------------------------------------------

from tm_iscsi.node import iscsi, txn_host  # noqa: E402
from tm_iscsi.node.errors import NodeError  # noqa: E402
from dmcache import orphans, stack, state  # noqa: E402


@pytest.fixture
def host(mocker, tmp_path):
    mocker.patch.object(iscsi, "initiator_name", return_value=HOST1)
    mocker.patch.object(orphans, "resume_orphans", return_value=[])
    calls = []
    mocker.patch.object(txn_host, "attach_target", side_effect=lambda portal, iqn, serial, chap,
                        timeout: calls.append(("attach", iqn)) or {"stable_path": f"/dev/{iqn}"})
    mocker.patch.object(txn_host, "detach_target", side_effect=lambda iqn, link=None:
                        calls.append(("detach", iqn)))
    mocker.patch.object(txn_host, "replace_symlink", side_effect=lambda link, target:
                        calls.append(("link", link, target)))
    mocker.patch.object(stack, "teardown", return_value={"existed": True, "flushed": True})
    return calls, tmp_path


def _lun(name):
    return protocol.Lun(f"iqn.2026-11.io.tm-iscsi:vgt.{name}", "serial-" + name)


def test_a_host_with_another_initiator_name_says_so_and_does_nothing(host, capsys):
    calls, tmp_path = host
    request = protocol.HostAttach(portal="storage:3260", initiator="iqn.2026-11.lab:old", disks=[
        protocol.HostDisk(name="vm-7-disk-0", mode="none", link=f"{tmp_path}/7/disk.0",
                          luns={"clone": _lun("vm-7-disk-0")})])
    code, out, err = run(capsys, "host-attach", request)
    assert code == 0, err
    assert out == {"initiator": HOST1, "initiator_mismatch": True, "disks": []}
    assert calls == []


def test_host_attach_logs_in_checks_and_links_every_disk_in_one_call(host, capsys):
    calls, tmp_path = host
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[
        protocol.HostDisk(name=f"vm-7-disk-{d}", mode="none", link=f"{tmp_path}/7/disk.{d}",
                          luns={"clone": _lun(f"vm-7-disk-{d}")}) for d in (0, 1)])
    code, out, err = run(capsys, "host-attach", request)
    assert code == 0, err
    # Every LUN is attached before the first disk is assembled; the links in the disks' order.
    assert sorted(c[0] for c in calls[:2]) == ["attach", "attach"]
    assert [c[0] for c in calls[2:]] == ["link", "link"]
    assert calls[2][1:] == (f"{tmp_path}/7/disk.0", "/dev/iqn.2026-11.io.tm-iscsi:vgt.vm-7-disk-0")


def _cached_disk(tmp_path, vm, disk):
    name = f"vm-{vm}-disk-{disk}"
    return protocol.HostDisk(name=name, mode="read+writeback", link=f"{tmp_path}/{vm}/disk.{disk}",
                             base_key="vgt:img-0:0011aabb",
                             luns={"clone": _lun(name), "map": _lun(name + "-map"),
                                   "base": _lun("img-0-base")})


def test_host_attach_waits_for_all_its_luns_at_once(host, mocker, capsys):
    """Each attach blocks until three are under way: done one after the other, it times out."""
    import threading
    calls, tmp_path = host
    together = threading.Barrier(3, timeout=10)

    def attach(portal, iqn, serial, chap, timeout):
        together.wait()
        calls.append(("attach", iqn))
        return {"stable_path": f"/dev/{iqn}"}
    mocker.patch.object(txn_host, "attach_target", side_effect=attach)
    built = mocker.patch.object(txn_host, "_assemble", side_effect=lambda req, disk, devices,
                                wb_made: {"name": disk.name, "devices": devices})
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1,
                                  disks=[_cached_disk(tmp_path, 7, 0)])
    code, out, err = run(capsys, "host-attach", request)
    assert code == 0, err
    assert len(calls) == 3 and built.call_count == 1
    assert out["disks"][0]["devices"]["map"] == "/dev/iqn.2026-11.io.tm-iscsi:vgt.vm-7-disk-0-map"


def test_a_base_two_disks_share_is_attached_once(host, mocker, capsys):
    calls, tmp_path = host
    mocker.patch.object(txn_host, "_assemble", side_effect=lambda req, disk, devices,
                        wb_made: {"name": disk.name})
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[
        _cached_disk(tmp_path, 7, 0), _cached_disk(tmp_path, 7, 1)])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 0, err
    attached = [c[1] for c in calls if c[0] == "attach"]
    assert len(attached) == 5 and attached.count("iqn.2026-11.io.tm-iscsi:vgt.img-0-base") == 1


def test_a_lun_that_fails_fails_the_call_once_the_others_are_done(host, mocker, capsys):
    import time
    calls, tmp_path = host

    def attach(portal, iqn, serial, chap, timeout):
        if iqn.endswith("-map"):
            raise NodeError(f"LUN 0 of {iqn} did not appear within the timeout")
        time.sleep(0.3)
        calls.append(("attach", iqn))
        return {"stable_path": f"/dev/{iqn}"}
    mocker.patch.object(txn_host, "attach_target", side_effect=attach)
    built = mocker.patch.object(txn_host, "_assemble")
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1,
                                  disks=[_cached_disk(tmp_path, 7, 0)])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 1 and "vm-7-disk-0-map did not appear" in err
    assert len(err.strip().splitlines()) == 1
    assert len(calls) == 2 and not built.called


@pytest.fixture
def prepared(mocker):
    import threading
    done = threading.Event()
    mocker.patch.object(txn_host, "_require_cache_vg")
    prepare = mocker.patch.object(stack, "prepare", side_effect=lambda req, size: done.set()
                                  or True)
    discard = mocker.patch.object(stack, "discard")
    return done, prepare, discard


def test_write_back_lvs_are_made_while_the_luns_attach(host, mocker, capsys, prepared):
    calls, tmp_path = host
    done, prepare, discard = prepared

    def attach(portal, iqn, serial, chap, timeout):
        assert done.wait(10), "the write-back LVs were not made while the LUNs attached"
        return {"stable_path": f"/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-{iqn}-lun-0"}
    mocker.patch.object(txn_host, "attach_target", side_effect=attach)
    mocker.patch.object(iscsi, "resolve", return_value="10.0.0.1")
    built = mocker.patch.object(txn_host, "_assemble", side_effect=lambda req, disk, devices,
                                wb_made: {"name": disk.name, "wb_made": wb_made})
    disk = _cached_disk(tmp_path, 7, 0)
    disk.size_bytes = 1 << 30
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[disk])
    code, out, err = run(capsys, "host-attach", request)
    assert code == 0, err
    assert out["disks"] == [{"name": "vm-7-disk-0", "wb_made": True}]
    req, size = prepare.call_args[0]
    assert size == 1 << 30 and req.clone_dev == (
        "/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.2026-11.io.tm-iscsi:vgt.vm-7-disk-0-lun-0")
    assert built.call_count == 1 and not discard.called


def test_a_lun_that_fails_takes_back_the_prepared_stack(host, mocker, capsys, prepared):
    calls, tmp_path = host
    done, prepare, discard = prepared

    def attach(portal, iqn, serial, chap, timeout):
        if iqn.endswith("-map"):
            raise NodeError(f"LUN 0 of {iqn} did not appear within the timeout")
        return {"stable_path": f"/dev/{iqn}"}
    mocker.patch.object(txn_host, "attach_target", side_effect=attach)
    mocker.patch.object(iscsi, "resolve", return_value="10.0.0.1")
    built = mocker.patch.object(txn_host, "_assemble")
    disk = _cached_disk(tmp_path, 7, 0)
    disk.size_bytes = 1 << 30
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[disk])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 1 and "did not appear" in err
    assert discard.call_args[0][0].name == "vm-7-disk-0" and not built.called


def test_without_its_size_a_stack_is_not_prepared(host, mocker, capsys, prepared):
    calls, tmp_path = host
    done, prepare, discard = prepared
    mocker.patch.object(txn_host, "_assemble", side_effect=lambda req, disk, devices,
                        wb_made: {"name": disk.name})
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1,
                                  disks=[_cached_disk(tmp_path, 7, 0)])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 0, err
    assert not prepare.called


def test_one_lun_given_two_serials_is_refused_before_any_login(host, capsys):
    calls, tmp_path = host
    second = _cached_disk(tmp_path, 7, 1)
    second.luns["base"] = protocol.Lun(second.luns["base"].iqn, "serial-other")
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[
        _cached_disk(tmp_path, 7, 0), second])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 2 and "two unit serials" in err and calls == []


def test_host_attach_unpacks_the_vm_dir_that_follows_the_chap_secret_before_any_disk(
        host, mocker, capsys):
    calls, tmp_path = host
    seen = {}
    mocker.patch.object(txn_host.vmdir, "unpack", side_effect=lambda path, stream: calls.append(
        ("unpack", path, stream.read())))
    mocker.patch.object(txn_host, "attach_target", side_effect=lambda portal, iqn, serial, chap,
                        timeout: seen.setdefault("chap", chap) and calls.append(
                            ("attach", iqn)) or {"stable_path": f"/dev/{iqn}"})
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, chap_user="one", disks=[
        protocol.HostDisk(name="vm-7-disk-0", mode="none", link=f"{tmp_path}/7/disk.0",
                          luns={"clone": _lun("vm-7-disk-0")})])
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b"s3cret-Secret\n\x00tar bytes\xff"))
    try:
        code = cli.main(["host-attach", "--request", protocol.encode(request),
                         "--unpack-dir", f"{tmp_path}/7"])
    finally:
        sys.stdin = saved
    assert code == 0, capsys.readouterr().err
    assert seen["chap"] == ("one", "s3cret-Secret")
    assert calls[0] == ("unpack", f"{tmp_path}/7", b"\x00tar bytes\xff")
    assert [c[0] for c in calls[1:]] == ["attach", "link"]


def test_a_stale_initiator_unpacks_nothing(host, mocker, capsys):
    calls, tmp_path = host
    unpack = mocker.patch.object(txn_host.vmdir, "unpack")
    request = protocol.HostAttach(portal="storage:3260", initiator="iqn.2026-11.lab:old", disks=[
        protocol.HostDisk(name="vm-7-disk-0", mode="none", link=f"{tmp_path}/7/disk.0",
                          luns={"clone": _lun("vm-7-disk-0")})])
    code = cli.main(["host-attach", "--request", protocol.encode(request),
                     "--unpack-dir", f"{tmp_path}/7"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["initiator_mismatch"] and not unpack.called and calls == []


def test_an_unpack_dir_outside_the_datastores_is_refused_before_anything(host, mocker, capsys):
    calls, tmp_path = host
    unpack = mocker.patch.object(txn_host.vmdir, "unpack")
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[
        protocol.HostDisk(name="vm-7-disk-0", mode="none", link=f"{tmp_path}/7/disk.0",
                          luns={"clone": _lun("vm-7-disk-0")})])
    code = cli.main(["host-attach", "--request", protocol.encode(request),
                     "--unpack-dir", "/etc"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert not unpack.called and calls == []


def test_a_link_outside_the_datastores_is_refused_before_any_login(host, capsys):
    calls, _ = host
    request = protocol.HostAttach(portal="storage:3260", initiator=HOST1, disks=[
        protocol.HostDisk(name="vm-7-disk-0", mode="none", link="/etc/cron.d/x",
                          luns={"clone": _lun("vm-7-disk-0")})])
    code, _, err = run(capsys, "host-attach", request)
    assert code == 1 and len(err.strip().splitlines()) == 1 and calls == []


def test_host_detach_lets_the_base_go_only_when_no_stack_reads_it(host, mocker, capsys):
    calls, tmp_path = host
    others = [mocker.Mock(base_key="vgt.img-0-base.g1")]
    mocker.patch.object(state, "list_stacks", return_value=others)
    disk = protocol.HostRelease(name="vm-7-disk-0", flush=False, luns={
        "clone": _lun("vm-7-disk-0"), "map": _lun("vm-7-disk-0-map"), "base": _lun("img-0-base")},
        base_prefix=protocol.base_key_prefix("vgt", "img-0"))
    request = protocol.HostDetach(portal="storage:3260", disks=[disk])
    code, out, err = run(capsys, "host-detach", request)
    assert code == 0, err
    assert [c[1].rsplit(".", 1)[1] for c in calls] == ["vm-7-disk-0", "vm-7-disk-0-map"]
    assert out["disks"][0]["base_released"] is False and out["initiator"] == HOST1
    others.clear()
    calls.clear()
    code, out, _ = run(capsys, "host-detach", request)
    assert [c[1].rsplit(".", 1)[1] for c in calls] == ["vm-7-disk-0", "vm-7-disk-0-map",
                                                      "img-0-base"]
    assert out["disks"][0]["base_released"] is True


def test_a_clone_whose_map_went_gets_no_new_empty_map(vg, capsys):
    """After a revert or a resize the map is gone: an empty one would claim nothing was written
    and the disk would read the image's base where it holds its own data."""
    run(capsys, "storage-attach", clone_request())
    vg.lvs.pop("vm-7-disk-0-map")
    again = clone_request()
    again.disks[0].create = None
    code, out, err = run(capsys, "storage-attach", again)
    assert code == 0, err
    assert out["disks"][0]["mode"] == "writeback" and "vm-7-disk-0-map" not in vg.lvs
