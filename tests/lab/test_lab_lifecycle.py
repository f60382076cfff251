"""The lab itself: exec passes exit codes and output through, a crashed node comes back with its
disks, and `lab down` leaves nothing behind and the lab comes up again after it."""
import subprocess

import pytest

from lab import api, config, netns, nodes

LAB_CLI = str(config.SOURCE_DIR / "lab" / "lab")


def test_exec_passes_exit_code_and_output_through(lab):
    result = subprocess.run([LAB_CLI, "exec", "host1", "--", "sh", "-c",
                             "echo out; echo 'err and spaces' >&2; exit 7"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert result.stderr == "err and spaces\n"
    # Arguments keep their boundaries: no word of them is re-split by a remote shell.
    result = subprocess.run([LAB_CLI, "exec", "host2", "--", "printf", "%s|", "a b", "$HOME", ";"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "a b|$HOME|;|"


def test_status_reports_every_node_up_with_memory(lab):
    rows = {row["name"]: row for row in api.status()}
    assert set(rows) == {"storage", "host1", "host2"}
    for row in rows.values():
        assert row["state"] == "up"
        assert row["rss_mib"] > 10


def test_crashed_host_comes_back_with_its_disk(lab):
    lab.sh("host1", """
        printf 'survives a crash' | dd of=/dev/ubdb bs=512 seek=2048 conv=fsync status=none
    """)
    boot_id = lab.sh("host1", "cat /proc/sys/kernel/random/boot_id").strip()
    api.crash("host1")
    assert nodes.pid_of(config.node("host1")) is None
    assert lab.run("host1", ["true"], timeout=30).returncode != 0
    api.boot("host1")
    assert lab.sh("host1", "cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    assert lab.sh("host1", "dd if=/dev/ubdb bs=512 skip=2048 count=1 status=none "
                           "| head -c 16") == "survives a crash"
    # The other nodes did not notice.
    assert lab.sh("host2", "hostname").strip() == "host2"


@pytest.mark.lab_cycle
def test_down_leaves_nothing_and_up_works_again(lab_session):
    api.down()
    assert api.leftovers() == []
    assert nodes.lab_processes() == []
    assert netns.leftovers() == []
    assert not config.RUN_DIR.exists()
    with open("/proc/mounts") as mounts:
        assert str(config.RUN_DIR) not in mounts.read()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert config.UPLINK_HOST_SIDE not in links and "tap-" not in links

    timings = api.up()
    assert timings["image"] < 5, "the cached image must be reused, not rebuilt"
    assert all(row["state"] == "up" for row in api.status())
    assert lab_session.sh("storage", "hostname").strip() == "storage"
