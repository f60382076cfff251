"""dm tables as the kernel takes them (exact strings), read back as the kernel shows them, and
the metadata sizes the stacks ask for."""
import pytest

from dmcache import tables

MIB = 1024 * 1024


def test_cache_tables_exact():
    assert tables.cache(524288, "/dev/tmi-cache/m", "/dev/tmi-cache/d", "/dev/sdb") == (
        "0 524288 cache /dev/tmi-cache/m /dev/tmi-cache/d /dev/sdb 128 1 writeback smq 0")
    assert tables.cache(524288, "254:1", "254:0", "8:16", mode="writethrough", policy="cleaner",
                        core_args={"migration_threshold": 65536}) == (
        "0 524288 cache 254:1 254:0 8:16 128 1 writethrough cleaner 2 migration_threshold 65536")
    assert tables.cache(100, "m", "d", "o", block_sectors=64, mode="passthrough",
                        features=["metadata2"], core_args={"migration_threshold": 0}) == (
        "0 100 cache m d o 64 2 passthrough metadata2 smq 2 migration_threshold 0")


def test_clone_tables_exact():
    assert tables.clone(524288, "/dev/sdc", "/dev/mapper/tmi-wb-vm-1-disk-0",
                        "/dev/mapper/tmi-rc-0123", features=["no_hydration"]) == (
        "0 524288 clone /dev/sdc /dev/mapper/tmi-wb-vm-1-disk-0 /dev/mapper/tmi-rc-0123 128 "
        "1 no_hydration")
    assert tables.clone(8, "m", "d", "s", 8) == "0 8 clone m d s 8"
    assert tables.clone(8, "m", "d", "s", 8, core_args={"hydration_threshold": 512,
                                                        "hydration_batch_size": 16}) == (
        "0 8 clone m d s 8 0 4 hydration_threshold 512 hydration_batch_size 16")
    assert tables.linear(2048, "/dev/sdb", 8) == "0 2048 linear /dev/sdb 8"


@pytest.mark.parametrize("call", [
    lambda: tables.cache(10, "m", "d", "o", mode="writearound"),
    lambda: tables.cache(10, "m", "d", "o", policy="mq2"),
    lambda: tables.cache(10, "m", "d", "o", block_sectors=100),
    lambda: tables.cache(10, "m", "d", "o", block_sectors=32),
    lambda: tables.cache(0, "m", "d", "o"),
    lambda: tables.cache(10, "m d", "d", "o"),
    lambda: tables.cache(10, "m", "d", "o;reboot"),
    lambda: tables.clone(10, "m", "d", "s", 96),
    lambda: tables.clone(10, "m", "d", "s", 4),
    lambda: tables.clone(10, "m", "d", "s", features=["a b"]),
    lambda: tables.linear(-1, "d"),
])
def test_bad_values_never_become_a_table(call):
    with pytest.raises(ValueError):
        call()


def test_parse_live_tables():
    t = tables.parse("0 524288 cache 254:4 254:3 8:16 128 1 writeback smq 0")
    assert (t.target, t.length, t.devices, t.block_sectors, t.features, t.policy, t.args) == (
        "cache", 524288, ("254:4", "254:3", "8:16"), 128, ["writeback"], "smq", {})
    t = tables.parse("0 524288 cache 254:1 254:0 8:16 128 1 writethrough cleaner 2 "
                     "migration_threshold 32768")
    assert tables.cache_mode(t.features) == "writethrough" and t.policy == "cleaner"
    assert t.args == {"migration_threshold": "32768"}
    t = tables.parse("0 524288 clone 254:1 254:0 8:0 128 1 no_hydration")
    assert (t.target, t.devices, t.block_sectors, t.features) == (
        "clone", ("254:1", "254:0", "8:0"), 128, ["no_hydration"])
    t = tables.parse("0 65536 clone 254:4 254:2 8:0 8 0 4 hydration_threshold 8 "
                     "hydration_batch_size 1")
    assert t.features == [] and t.args == {"hydration_threshold": "8",
                                           "hydration_batch_size": "1"}
    assert tables.parse("0 2048 linear 8:16 8").devices == ("8:16",)
    assert tables.parse("0 2048 error").target == "error"
    assert tables.cache_mode([]) == "writethrough"
    with pytest.raises(ValueError):
        tables.parse("garbage")


def test_built_tables_read_back():
    text = tables.cache(2048, "1:2", "3:4", "5:6", mode="writeback",
                        core_args={"migration_threshold": 0})
    t = tables.parse(text)
    assert t.devices == ("1:2", "3:4", "5:6") and t.args == {"migration_threshold": "0"}
    t = tables.parse(tables.clone(2048, "1:2", "3:4", "5:6", features=["no_hydration"]))
    assert t.devices == ("1:2", "3:4", "5:6") and t.features == ["no_hydration"]


def test_devno(tmp_path):
    assert tables.devno("8:16") == "8:16"
    assert tables.devno("/dev/null") == "1:3"


def test_metadata_sizes():
    # A 4 MiB map (one LVM extent) serves disks of hundreds of GiB; bigger disks get more.
    assert tables.clone_metadata_bytes(256 * MIB) == 4 * MIB
    assert tables.clone_metadata_bytes(300 * 1024 * MIB) == 4 * MIB
    assert tables.clone_metadata_bytes(4 * 1024 * 1024 * MIB) > 4 * MIB
    assert tables.cache_metadata_bytes(1024 * MIB) == 8 * MIB
    assert tables.cache_metadata_bytes(64 * 1024 * MIB) == 4 * MIB + 1048576 * 64
    assert tables.regions(256 * MIB) == 4096
    assert tables.regions(256 * MIB + 512) == 4097
