"""Suspended dm devices left by a killed helper are resumed, those of a live action are not, and
nothing that is not tm_iscsi's is touched."""
import pytest

from dmcache import dmsetup, orphans
from tm_iscsi.node import locks
from tm_iscsi.node import run as _run


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path / "locks"))


def _listing(mocker, text):
    mocker.patch.object(_run, "run", return_value=_run.Result([], 0, text, "", 0.0))


def test_only_tm_iscsi_s_suspended_devices_are_listed(mocker):
    _listing(mocker, "tmi-wb-vm-1-disk-0|L-sw\ntmi-top-vm-1-disk-0|L--w\n"
                     "tmi--cache-x|L-sw\nother|L-sw\ntmi-rc1|L-sw\n")
    assert orphans.suspended() == ["tmi-wb-vm-1-disk-0", "tmi-rc1"]


def test_a_device_whose_owner_is_gone_is_resumed_and_a_live_one_kept(mocker):
    mocker.patch.object(orphans, "suspended", return_value=["tmi-wb-vm-1-disk-0",
                                                            "tmi-top-vm-2-disk-0"])
    mocker.patch.object(dmsetup, "info", return_value=mocker.Mock(suspended=True))
    resume = mocker.patch.object(dmsetup, "resume")
    import fcntl
    import os
    os.makedirs(locks.LOCK_DIR, exist_ok=True)
    # Another process's hold: a lock file description of its own.
    fd = os.open(locks._path("stack", "vm-2-disk-0"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert orphans.resume_orphans() == ["tmi-wb-vm-1-disk-0"]
    finally:
        os.close(fd)
    resume.assert_called_once_with("tmi-wb-vm-1-disk-0")


def test_an_idle_read_cache_left_by_a_killed_teardown_is_released_for_its_base(mocker):
    from dmcache import readcache, state as st
    records = [mocker.Mock(id="a1", key="vg-one-100.img-0-base.g1", vg="tmi-cache"),
               mocker.Mock(id="b2", key="vg-one-100.img-1-base.g1", vg="tmi-cache"),
               mocker.Mock(id="c3", key="vg-one-100.img-0-base.g0", vg="tmi-cache")]
    mocker.patch.object(st, "list_records", return_value=records)
    # c3's device is gone already (only its LVs are kept): nothing to release.
    mocker.patch.object(readcache.dmsetup, "exists",
                        side_effect=lambda name: name != readcache.dm_name("c3"))
    release = mocker.patch.object(readcache, "release", return_value=0)
    assert readcache.release_idle("vg-one-100.img-0-base.") == ["a1"]
    release.assert_called_once_with("tmi-cache", "a1", warm_seconds=0)
