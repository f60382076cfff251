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
