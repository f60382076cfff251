"""`tm-iscsi status` and `cache-stats`: what is asked of which node, the tables people read and
the JSON scripts read; a host without the cache layer, and one that does not answer."""
import json

import pytest

from tm_iscsi.admin import cli
from tm_iscsi.errors import DriverError

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    HOST1_IQN, VG, cloud, iqn, nodes, oned, runner, session, target)

POOL = {"vg": VG, "pool": "tpool", "data_total_bytes": 20 << 30, "data_used_bytes": 5 << 30,
        "data_percent": 25.0, "metadata_total_bytes": 64 << 20,
        "metadata_used_bytes": 8 << 20, "metadata_percent": 12.5, "vg_free_bytes": 2 << 30}
NO_CACHE = DriverError("host2: tm-iscsi-node: argument command: invalid choice: "
                       "'cache-status' (choose from 'attach', 'detach')")
CACHE = {"vg": "tmi-cache", "present": True, "size_bytes": 6 << 30, "free_bytes": 5 << 30,
         "read_caches": [{"key": "vg-one-100.img-0-base.8c200aaf", "id": "c1",
                          "size_bytes": 64 << 20, "refs": 2, "active": True, "regions": 64,
                          "hydrated_regions": 16, "read_hits": 300, "read_misses": 100,
                          "read_hits_total": 900, "read_misses_total": 100}],
         "stacks": [{"name": "vm-0-disk-0", "mode": "read+writeback", "phase": "assembled",
                     "degraded": False, "base_key": "vg-one-100.img-0-base.8c200aaf",
                     "dirty_blocks": 3, "read_hits": 10, "read_misses": 30, "write_hits": 5,
                     "write_misses": 1}]}


@pytest.fixture
def filled(nodes):
    nodes.answers.update({
        "pool-status": POOL,
        "exports": {"targets": [target("vm-0-disk-0", HOST1_IQN),
                                {"iqn": "iqn.2003-01.org.other:foreign", "initiators": []}]},
        ("host1", "sessions"): {"sessions": [session("vm-0-disk-0")]},
        ("host1", "cache-status"): CACHE,
        ("host2", "cache-status"): NO_CACHE,
    })
    return nodes


def test_status_tables(cloud, filled, capsys):
    assert cli.main(["status"], cloud=cloud) == 0
    out = capsys.readouterr().out
    blocks = {b.split("\n", 1)[0]: b for b in out.split("\n\n")}
    assert "100  iscsi_lvm_images  image   storage  vg-one-100/tpool  read+writeback" in out
    assert ("storage  vg-one-100/tpool  100,101     25.0%  5.0 GiB of 20.0 GiB  12.5%     "
            "2.0 GiB") in blocks["THIN POOLS"]
    assert f"storage  {iqn('vm-0-disk-0')}  host1       host1" in blocks["EXPORTS"]
    assert "foreign" not in out   # not one of ours
    hosts = blocks["HOSTS"]
    assert f"host1  MONITORED  {HOST1_IQN}  1         1 read cache(s), 1 stack(s), 5.0 GiB free" \
        in hosts
    assert "no cache layer" in hosts


def test_status_json(cloud, filled, capsys):
    assert cli.main(["status", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in data["datastores"]] == [100, 101]
    assert data["pools"][0]["data_percent"] == 25.0 and data["pools"][0]["datastores"] == [100, 101]
    assert data["exports"] == [{"storage": "storage", "iqn": iqn("vm-0-disk-0"),
                                "backstore": f"{VG}.vm-0-disk-0",
                                "initiators": [{"iqn": HOST1_IQN, "host": "host1"}],
                                "sessions": ["host1"]}]
    host2 = data["hosts"][1]
    assert host2["cache"] == {"installed": False} and host2["sessions"] == []
    assert data["problems"] == []


def test_status_goes_on_when_a_host_does_not_answer(cloud, filled, capsys):
    filled.answers[("host2", "sessions")] = DriverError("cannot reach host2 over ssh: timeout")
    assert cli.main(["--json", "status"], cloud=cloud) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["hosts"][1]["error"] == "cannot reach host2 over ssh: timeout"
    assert data["hosts"][0]["sessions"]
    # a status never waits on a hung host for the full SSH timeout
    assert ("host2", "cache-status") not in filled.commands()


def test_cache_stats_per_host_and_image(cloud, filled, capsys):
    assert cli.main(["cache-stats"], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert "host1  ok              tmi-cache  6.0 GiB  5.0 GiB" in out
    assert "host2  no cache layer" in out
    assert "host1  0      64.0 MiB  25.0%  300        100     75.0%  90.0%     2" in out
    assert "HIT% ALL: since the read cache was made" in out
    assert "host1  vm-0-disk-0  read+writeback  3      25.0%      5           1" in out


def test_cache_stats_json(cloud, filled, capsys):
    assert cli.main(["cache-stats", "--host", "host1", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert [h["host"] for h in data["hosts"]] == ["host1"]
    assert data["read_caches"][0]["image"] == 0 and data["read_caches"][0]["hit_percent"] == 75.0
    assert data["stacks"][0]["dirty_blocks"] == 3


def test_bad_arguments_are_one_line(cloud, capsys):
    for argv, fragment in ((["statux"], "invalid choice: 'statux'"),
                           (["image", "export", "x", "f"], "'x' is not a whole number"),
                           (["image", "export", "1", "f", "--format", "vmdk"], "invalid choice"),
                           (["image", "import", "f"], "--datastore"),
                           (["doctor", "--role", "nas"], "--role takes storage, host"),
                           ([], "required")):
        assert cli.main(argv, cloud=cloud) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("tm-iscsi: ") and err.count("\n") == 1 and fragment in err, err
