"""`dmsetup status` lines captured on the lab's kernel (6.1, UML), parsed into named fields."""
import pytest

from dmcache import status
from tm_iscsi.node.errors import NodeError

# dm-cache over a clone LUN right after creation: udev's probes already read (and smq
# promoted) a few blocks.
CACHE_NEW = ("0 524288 cache 8 9/2048 128 21/1024 35 23 0 0 0 21 0 2 writeback "
             "no_discard_passdown 2 migration_threshold 2048 smq 0 rw - ")
# After region copies from the clone layer above and ten 4 KiB writes: 66 dirty blocks.
CACHE_DIRTY = ("0 524288 cache 8 9/2048 128 87/1024 35 23 10 0 0 87 66 2 writeback "
               "no_discard_passdown 2 migration_threshold 2048 smq 0 rw - ")
# As the stacks run it: no background migration, 257 dirty blocks kept on the host.
CACHE_RUNNING = ("0 524288 cache 8 9/2048 128 278/1024 150 24 3 13 0 278 257 2 writeback "
                 "no_discard_passdown 2 migration_threshold 0 smq 0 rw - ")
# Reloaded with the cleaner for a flush, written back.
CACHE_CLEANER = ("0 524288 cache 8 13/2048 128 265/1024 58 0 0 0 0 0 0 2 writethrough "
                 "no_discard_passdown 2 migration_threshold 32768 cleaner 0 rw - ")
CACHE_PASSTHROUGH = ("0 524288 cache 8 13/2048 128 265/1024 150 24 12 0 0 0 0 2 passthrough "
                     "no_discard_passdown 2 migration_threshold 2048 smq 0 rw - ")
# Its metadata device turned into an error target under it.
CACHE_FAIL = "0 65536 cache Fail"
# Not reproducible in the lab (needs damaged metadata): laid out as cache.rst and the kernel's
# cache_status() write it.
CACHE_NEEDS_CHECK = ("0 524288 cache 8 13/2048 128 265/1024 58 0 0 0 0 0 5 1 writeback "
                     "2 migration_threshold 0 smq 0 ro needs_check")

# The read cache (dm-clone over the base, no background hydration) after 66 regions copied.
CLONE_PARTIAL = ("0 524288 clone 8 6/1024 128 66/4096 0 1 no_hydration 4 hydration_threshold 1 "
                 "hydration_batch_size 1 rw")
CLONE_TWO_FEATURES = ("0 524288 clone 8 6/2048 128 4/4096 0 2 no_hydration no_discard_passdown 4 "
                      "hydration_threshold 1 hydration_batch_size 1 rw")
CLONE_HYDRATED = ("0 524288 clone 8 6/1024 128 4096/4096 0 1 no_discard_passdown 4 "
                  "hydration_threshold 256 hydration_batch_size 64 rw")
CLONE_NO_FEATURES = ("0 65536 clone 8 6/2048 8 1032/8192 0 0 4 hydration_threshold 8 "
                     "hydration_batch_size 1 rw")
CLONE_FAIL = "0 65536 clone Fail"


def test_cache_fields():
    st = status.parse(CACHE_DIRTY)
    assert isinstance(st, status.CacheStatus)
    assert (st.start, st.length, st.metadata_block_sectors, st.metadata_used,
            st.metadata_total) == (0, 524288, 8, 9, 2048)
    assert (st.block_sectors, st.cache_used, st.cache_total) == (128, 87, 1024)
    assert (st.read_hits, st.read_misses, st.write_hits, st.write_misses) == (35, 23, 10, 0)
    assert (st.demotions, st.promotions, st.dirty) == (0, 87, 66)
    assert st.features == ["writeback", "no_discard_passdown"]
    assert st.core_args == {"migration_threshold": "2048"}
    assert (st.policy, st.policy_args, st.mode, st.needs_check) == ("smq", {}, "rw", False)
    assert st.io_mode == "writeback" and st.healthy
    assert st.as_dict()["dirty_blocks"] == 66 and st.as_dict()["block_bytes"] == 65536


@pytest.mark.parametrize("line, io_mode, policy, dirty, threshold", [
    (CACHE_NEW, "writeback", "smq", 0, "2048"),
    (CACHE_RUNNING, "writeback", "smq", 257, "0"),
    (CACHE_CLEANER, "writethrough", "cleaner", 0, "32768"),
    (CACHE_PASSTHROUGH, "passthrough", "smq", 0, "2048"),
])
def test_cache_modes(line, io_mode, policy, dirty, threshold):
    st = status.parse(line)
    assert (st.io_mode, st.policy, st.dirty, st.core_args["migration_threshold"]) == (
        io_mode, policy, dirty, threshold)


def test_cache_failures():
    st = status.parse(CACHE_FAIL)
    assert st.mode == "fail" and not st.healthy and st.length == 65536
    st = status.parse(CACHE_NEEDS_CHECK)
    assert st.mode == "ro" and st.needs_check and not st.healthy and st.dirty == 5


def test_clone_fields():
    st = status.parse(CLONE_PARTIAL)
    assert isinstance(st, status.CloneStatus)
    assert (st.metadata_block_sectors, st.metadata_used, st.metadata_total) == (8, 6, 1024)
    assert (st.region_sectors, st.hydrated, st.regions, st.hydrating) == (128, 66, 4096, 0)
    assert st.features == ["no_hydration"]
    assert st.core_args == {"hydration_threshold": "1", "hydration_batch_size": "1"}
    assert st.mode == "rw" and st.healthy
    assert status.parse(CLONE_TWO_FEATURES).features == ["no_hydration", "no_discard_passdown"]
    assert status.parse(CLONE_HYDRATED).hydrated == 4096
    st = status.parse(CLONE_NO_FEATURES)
    assert (st.features, st.region_sectors, st.hydrated, st.regions) == ([], 8, 1032, 8192)
    assert st.as_dict() == {"hydrated_regions": 1032, "regions": 8192, "region_bytes": 4096,
                            "metadata_mode": "rw", "needs_check": False}
    assert status.parse(CLONE_FAIL).mode == "fail"


def test_other_targets_and_errors():
    assert status.parse("0 2048 linear") is None
    with pytest.raises(ValueError):
        status.parse(CACHE_NEW + "\n" + CACHE_NEW)
    with pytest.raises(ValueError):
        status.parse_cache(CLONE_PARTIAL)
    with pytest.raises(NodeError) as err:
        status.of("tmi-wb-x", "0 10 cache 8 9of2048")
    assert "tmi-wb-x" in str(err.value) and "\n" not in str(err.value)
    assert status.of("x", None) is None
