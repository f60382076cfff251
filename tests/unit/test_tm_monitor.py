"""The system datastore's monitor: pool figures, then one TM_ISCSI_CACHE vector per usable host of
the datastore's clusters, a host that does not answer named as such and holding up no other."""
import xml.etree.ElementTree as ET

from tm_iscsi.errors import DriverError
from tm_iscsi.tm import monitor
from harness.documents import host_xml

STATUS = {
    "vg": "tmi-cache", "present": True, "size_bytes": 6 << 30, "free_bytes": 5 << 30,
    "read_caches": [
        {"key": "a", "size_bytes": 64 << 20, "read_hits": 900, "read_misses": 100},
        {"key": "b", "size_bytes": 32 << 20, "read_hits": None, "read_misses": None},
    ],
    "stacks": [
        {"name": "vm-1-disk-0", "mode": "read+writeback", "dirty_blocks": 12, "read_hits": 5,
         "read_misses": 7, "write_hits": 40, "write_misses": 2},
        {"name": "vm-2-disk-0", "mode": "read", "dirty_blocks": None},
        {"name": "vm-3-disk-0", "mode": "writeback", "dirty_blocks": 3, "read_hits": 1,
         "read_misses": 1, "write_hits": 4, "write_misses": 0},
    ],
}


class _Node:
    def __init__(self, host, answers, calls):
        self.host, self.answers, self.calls = host, answers, calls

    def call(self, command, *args, **kwargs):
        self.calls.append((self.host, command))
        answer = self.answers[self.host]
        if isinstance(answer, Exception):
            raise answer
        return answer


class _One:
    def __init__(self, hosts):
        self.hosts = hosts

    def host_pool(self):
        return [ET.fromstring(x) for x in self.hosts]


class _Ctx:
    def __init__(self, answers, hosts=()):
        self.calls = []
        self.answers = answers
        self.one = _One(hosts)

    def node(self, host):
        return _Node(host, self.answers, self.calls)


def test_summary_adds_up_read_caches_and_writeback_stacks():
    summary = monitor.cache_summary(STATUS)
    assert summary == {
        "READ_HITS_TOTAL": 0, "READ_MISSES_TOTAL": 0, "READ_CACHES": 2, "READ_CACHE_MB": 96, "READ_HITS": 900, "READ_MISSES": 100,
        "STACKS": 3, "WRITEBACK_STACKS": 2, "DIRTY_BLOCKS": 15, "WB_READ_HITS": 6,
        "WB_READ_MISSES": 8, "WB_WRITE_HITS": 44, "WB_WRITE_MISSES": 2,
        "CACHE_FREE_MB": 5120, "CACHE_TOTAL_MB": 6144}


def test_one_vector_per_host_and_an_unreachable_host_says_so():
    ctx = _Ctx({"host1": STATUS, "host2": DriverError("cannot reach host2 over ssh"),
                "host3": {"present": False}})
    lines = monitor.cache_lines(ctx, ["host1", "host2", "host3"])
    assert lines[0].startswith('TM_ISCSI_CACHE=[HOST="host1",STATE="ok",CACHE_FREE_MB="5120",')
    assert 'DIRTY_BLOCKS="15"' in lines[0] and 'READ_HITS="900"' in lines[0]
    assert lines[1] == 'TM_ISCSI_CACHE=[HOST="host2",STATE="unreachable"]'
    assert lines[2] == 'TM_ISCSI_CACHE=[HOST="host3",STATE="no-cache-vg"]'
    assert sorted(c[1] for c in ctx.calls) == ["cache-status"] * 3


def test_hosts_are_the_usable_ones_of_the_datastores_clusters():
    other_cluster = host_xml(5, "host5").replace("<CLUSTER_ID>0</CLUSTER_ID>",
                                                 "<CLUSTER_ID>7</CLUSTER_ID>")
    ctx = _Ctx({}, hosts=[host_xml(0, "host1"), host_xml(1, "host2", state=3),
                          host_xml(2, "host3", state=8), host_xml(3, "host4", state=1),
                          other_cluster])
    assert monitor.cache_hosts(ctx, ["0"]) == ["host1", "host4"]
    assert monitor.cache_hosts(ctx, []) == ["host1", "host4", "host5"]
