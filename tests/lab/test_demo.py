"""The demo, the README's first command, runs through on a lab of its own (install.sh changes
the nodes it installs) and every check in it passes: the bytes each VM reads and writes, the
live migration under writes, the disk kept as an image, nothing left behind. Its figures are
checked here too: the read cache serves the second VM of an image on a host."""
import json
import os
import subprocess

from lab import config
from tests.conftest import REPO


def test_demo_runs_and_its_figures_hold(tmp_path):
    figures = tmp_path / "demo.json"
    env = dict(os.environ, TM_ISCSI_LAB_ID=str(config.LAB_ID + 10))
    result = subprocess.run([str(REPO / "demo" / "run"), "--json", str(figures)], env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "every check passed" in result.stdout
    data = json.loads(figures.read_text())
    reads = {r["vm"]: r for r in data["reads"]}
    assert reads[0]["iscsi_mib"] >= 0.9 * reads[0]["read_mib"]      # first VM: over the network
    assert reads[1]["iscsi_mib"] <= 0.1 * reads[0]["iscsi_mib"]      # second VM on host1: local
    # The datastore monitor: the pool's three figures only; the caches in the hosts' templates.
    assert sorted(line.split("=")[0] for line in data["monitor"]) == [
        "FREE_MB", "TOTAL_MB", "USED_MB"]
    facts = data["host_facts"]
    assert all(facts[h]["TM_ISCSI_CACHE_STATE"] == "ok" for h in ("host1", "host2"))
    assert int(facts["host1"]["TM_ISCSI_IMAGE_0_MB"]) > 0   # two VMs of image 0 read it there
    steps = [s["what"] for s in data["steps"]]
    assert any(s.startswith("install.sh") for s in steps)
    assert any("live-migrate" in s for s in steps)
    # The demo's lab is gone: no process, namespace or mount of it left.
    left = subprocess.run([str(REPO / "lab" / "lab"), "status"], env=env, capture_output=True,
                          text=True)
    assert " up " not in left.stdout
