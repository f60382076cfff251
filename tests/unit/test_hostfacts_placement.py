"""Cache facts of a host as oned keeps them, and placement by them: the probe's lines (parsed as
oned parses a system probe's output, merged as oned merges them), images no longer cached going
to 0, a probe that never fails the host; `tm-iscsi estimate` ranking hosts by what they hold; the
placement hook's SCHED_RANK, evaluated by the stand-in's rank scheduler."""
import json
import xml.etree.ElementTree as ET

import pytest

from harness import rank
from harness.documents import host_xml, image_xml, vm_xml
from harness.oned import parse_probe_template
from tm_iscsi import hostfacts
from tm_iscsi.admin import cli, placement
from tm_iscsi.node.errors import NodeError
from vmm_hooks import cli as hook_cli

from tests.unit.test_admin_world import (  # noqa: F401  (fixtures)
    VG, cloud, nodes, oned, runner)

NOW = 1_800_000_000


def read_cache(image_id, mib, hydrated, regions=64, gen="aa", refs=1, last_used=10.0):
    return {"key": f"{VG}.img-{image_id}-base.{gen}", "id": f"c{image_id}{gen}",
            "size_bytes": mib << 20, "regions": regions, "hydrated_regions": hydrated,
            "refs": refs, "last_used": last_used, "read_hits_total": 30,
            "read_misses_total": 10}


STATUS = {"vg": "tmi-cache", "present": True, "size_bytes": 4096 << 20, "free_bytes": 3000 << 20,
          "read_caches": [read_cache(7, 1024, 64), read_cache(9, 512, 16, refs=0),
                          read_cache(7, 1024, 8, gen="old", last_used=1.0)],
          "stacks": [{"name": "vm-1-disk-0", "mode": "read+writeback", "dirty_bytes": 5 << 20},
                     {"name": "vm-2-disk-0", "mode": "read", "dirty_bytes": None}]}


def test_facts_per_image_from_the_newest_read_cache():
    attrs = dict(hostfacts.facts(STATUS, NOW))
    assert attrs[hostfacts.image_attr(7)] == "1024"      # the newest base of image 7, whole
    assert attrs[hostfacts.image_attr(9)] == "128"       # a quarter of 512 MiB
    assert attrs[hostfacts.FREE_MB] == "3000" and attrs[hostfacts.TOTAL_MB] == "4096"
    assert attrs[hostfacts.UNUSED_MB] == "512"           # the read cache no VM uses
    assert attrs[hostfacts.WRITEBACK_STACKS] == "1" and attrs[hostfacts.DIRTY_MB] == "5"
    assert attrs[hostfacts.READ_HITS] == "90" and attrs[hostfacts.READ_MISSES] == "30"
    assert attrs[hostfacts.IMAGES] == "7 9"
    assert dict(hostfacts.facts({"present": False}, NOW))[hostfacts.STATE] == \
        hostfacts.STATE_NO_VG


def test_an_image_no_longer_cached_is_printed_as_zero_for_a_week_then_forgotten():
    attrs = hostfacts.facts(STATUS, NOW)
    remembered = {3: NOW - 3600, 4: NOW - hostfacts.FORGET_AFTER_S - 1}
    out, keep = hostfacts.with_forgotten(attrs, remembered, NOW)
    values = dict(out)
    assert values[hostfacts.image_attr(3)] == "0"
    assert hostfacts.image_attr(4) not in values
    assert keep == {7: NOW, 9: NOW, 3: NOW - 3600}


def test_the_lines_parse_as_oned_parses_a_probe_and_merge_as_oned_merges(oned):
    lines = hostfacts.template_lines(hostfacts.facts(STATUS, NOW) +
                                     [(hostfacts.STATE, 'error: "quoted"\\ and\nnewline')])
    parsed = dict(parse_probe_template("\n".join(lines)))
    assert parsed[hostfacts.image_attr(7)] == "1024"
    assert "\n" not in parsed[hostfacts.STATE] and '"' not in parsed[hostfacts.STATE]
    oned.host_system_info(0, "\n".join(hostfacts.template_lines([(hostfacts.image_attr(7), "5"),
                                                                 ("CPU", "4")])))
    oned.host_system_info(0, "\n".join(hostfacts.template_lines([(hostfacts.image_attr(9), "2")])))
    host = ET.fromstring(oned.xml("host", 0))
    # merged: the first report's attributes stay, as in oned (none is ever removed)
    assert host.findtext(f"TEMPLATE/{hostfacts.image_attr(7)}") == "5"
    assert host.findtext(f"TEMPLATE/{hostfacts.image_attr(9)}") == "2"
    assert hostfacts.of_host(host.find("TEMPLATE"))["images"] == {7: 5, 9: 2}
    with pytest.raises(ValueError, match="not oned template syntax"):
        oned.host_system_info(0, 'A="1"\nB="unterminated\n')
    assert ET.fromstring(oned.xml("host", 0)).findtext("TEMPLATE/A") is None   # all or nothing


def test_the_probe_never_fails_the_host(mocker, tmp_path):
    memory = str(tmp_path / "m.json")
    mocker.patch("tm_iscsi.node.run.run", side_effect=NodeError("sudo: a password is required"))
    lines = hostfacts.probe("/usr/sbin/tm-iscsi-node", now=NOW, memory=memory)
    assert lines[0] == f'{hostfacts.STATE}="error: sudo: a password is required"'
    answer = mocker.Mock(stdout="{not json")
    mocker.patch("tm_iscsi.node.run.run", return_value=answer)
    assert "error" in hostfacts.probe("h", now=NOW, memory=memory)[0]
    answer.stdout = json.dumps(STATUS)
    lines = hostfacts.probe("h", now=NOW, memory=memory)
    assert f'{hostfacts.image_attr(7)}="1024"' in lines
    assert json.loads(open(memory).read()) == {"7": NOW, "9": NOW}
    answer.stdout = json.dumps(dict(STATUS, read_caches=[]))
    assert f'{hostfacts.image_attr(7)}="0"' in hostfacts.probe("h", now=NOW + 1, memory=memory)


def test_the_stand_in_ranks_as_the_rank_scheduler():
    host = ET.fromstring("<HOST><ID>1</ID><TEMPLATE><TM_ISCSI_IMAGE_7_MB>1024</TM_ISCSI_IMAGE_7_MB>"
                         "<WORD>abc</WORD></TEMPLATE><HOST_SHARE><FREE_CPU>50</FREE_CPU>"
                         "</HOST_SHARE></HOST>")
    assert rank.evaluate("TM_ISCSI_IMAGE_7_MB + TM_ISCSI_IMAGE_9_MB", host) == 1024
    assert rank.evaluate("(FREE_CPU + 1) * 2 - WORD", host) == 102
    assert rank.evaluate('"TM_ISCSI_IMAGE_7_MB" / 3', host) == 341
    assert rank.evaluate("", host) == 0
    for bad in ("(1", "1 +", "A $B", "A,B"):
        with pytest.raises(ValueError):
            rank.evaluate(bad, host)


def test_a_datastore_monitor_keeps_three_figures(oned):
    oned.datastore_monitored(101, "USED_MB=1\nTOTAL_MB=10\nFREE_MB=9\n")
    ds = ET.fromstring(oned.xml("datastore", 101))
    assert (ds.findtext("TOTAL_MB"), ds.findtext("FREE_MB")) == ("10", "9")
    with pytest.raises(ValueError, match="TM_ISCSI_CACHE"):
        oned.datastore_monitored(101, 'USED_MB=1\nTM_ISCSI_CACHE=[HOST="h"]\n')


def _facts(oned, host_id, **images):
    lines = hostfacts.template_lines(
        [(hostfacts.STATE, "ok"), (hostfacts.MEASURED_AT, str(NOW - 60)),
         (hostfacts.FREE_MB, "2000"), (hostfacts.UNUSED_MB, "0")] +
        [(hostfacts.image_attr(int(k[1:])), str(v)) for k, v in images.items()])
    oned.host_system_info(host_id, "\n".join(lines))


@pytest.fixture
def images(oned):
    oned.put_xml(image_xml(7))
    oned.put_xml(image_xml(9))
    oned.edit("datastore", 100, "TEMPLATE/CACHE_MODE", "read+writeback")
    template = ET.fromstring("<VMTEMPLATE><ID>3</ID><NAME>web</NAME><TEMPLATE>"
                             "<DISK><IMAGE>image-7</IMAGE></DISK><DISK><IMAGE_ID>9</IMAGE_ID>"
                             "<CACHE_MODE>none</CACHE_MODE></DISK>"
                             "<DISK><TYPE>swap</TYPE><SIZE>64</SIZE></DISK></TEMPLATE>"
                             "</VMTEMPLATE>")
    oned.put_document(ET.tostring(template, encoding="unicode"))


def test_estimate_ranks_the_host_that_holds_the_image_first(cloud, oned, images, capsys):
    _facts(oned, 0, i9=64)                    # host1 holds image 9 only (its disk is uncached)
    _facts(oned, 1, i7=48)                    # host2 holds 48 of image 7's 64 MiB
    assert cli.main(["estimate", "--template", "3", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["image_id"] for d in data["disks"]] == [7, 9]
    first, second = data["hosts"]
    assert (first["host"], first["cached_mib"], first["iscsi_read_mib"]) == ("host2", 48, 80)
    assert first["cache_need_mib"] == 1024 and first["cache_free_after_mib"] == 2000 - 1024
    # host1: all of both over iSCSI, a new read cache of image 7 and a write-back cache
    assert (second["host"], second["iscsi_read_mib"], second["cache_need_mib"]) == \
        ("host1", 128, 64 + 1024)
    assert data["sched_rank"] == "TM_ISCSI_IMAGE_7_MB"
    assert cli.main(["estimate", "--image", "7"], cloud=cloud) == 0
    out = capsys.readouterr().out
    assert 'SCHED_RANK = "TM_ISCSI_IMAGE_7_MB"' in out
    assert out.index("host2") < out.index("host1")


def test_estimate_live_asks_the_hosts(cloud, oned, images, nodes, capsys):
    nodes.answers[("host1", "cache-status")] = dict(STATUS, read_caches=[read_cache(7, 64, 64)])
    assert cli.main(["estimate", "--image", "7", "--live", "--json"], cloud=cloud) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hosts"][0]["host"] == "host1" and data["hosts"][0]["iscsi_read_mib"] == 0


def test_estimate_refuses_what_it_cannot_resolve(cloud, oned, images, capsys):
    assert cli.main(["estimate", "--template", "99"], cloud=cloud) == 1
    assert "template 99" in capsys.readouterr().err


def test_the_place_hook_sets_a_rank_the_stand_in_places_by(cloud, oned, images, capsys):
    vm = ET.fromstring(vm_xml(5, state=1, lcm=0, hosts=()))
    disk = vm.find("TEMPLATE/DISK")
    disk.find("IMAGE_ID").text = "7"
    oned.put_xml(ET.tostring(vm, encoding="unicode"))
    # not asked for: nothing set
    assert hook_cli.main(["place", "--vm", "5", "--json"], cloud=cloud) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "not asked"
    oned.edit_with("datastore", 100, lambda r: ET.SubElement(r.find("TEMPLATE"),
                                                             "CACHE_AWARE_PLACEMENT").__setattr__(
                                                                 "text", "YES"))
    cloud._cached.clear()
    assert hook_cli.main(["place", "--vm", "5", "--json"], cloud=cloud) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["action"] == "set" and "TM_ISCSI_IMAGE_7_MB" in done["sched_rank"]
    _facts(oned, 0, i7=1)
    _facts(oned, 1, i7=60)
    assert oned.place(5) == "host2"
    # a user's own SCHED_RANK is left alone
    oned.edit("vm", 5, "USER_TEMPLATE/SCHED_RANK", "FREE_CPU")
    assert hook_cli.main(["place", "--vm", "5", "--json"], cloud=cloud) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "user's own"


def test_placement_option_is_checked(cloud, oned):
    oned.edit_with("datastore", 100, lambda r: ET.SubElement(r.find("TEMPLATE"),
                                                             "CACHE_AWARE_PLACEMENT").__setattr__(
                                                                 "text", "maybe"))
    entry = [e for e in cloud.datastores() if e.id == 100][0]
    assert "CACHE_AWARE_PLACEMENT='maybe' must be YES or NO" in entry.error


def test_rank_expression_and_host_view(oned):
    assert hostfacts.rank_expression([9, 7, 7]) == "TM_ISCSI_IMAGE_7_MB + TM_ISCSI_IMAGE_9_MB"
    assert placement.AUTO_MARK.startswith(hostfacts.PREFIX)
    oned.put_document(host_xml(4, "host4"))
    _facts(oned, 4, i7=3)
    from tm_iscsi.admin.views import Host
    assert Host.from_xml(oned.xml("host", 4)).cache["images"] == {7: 3}
