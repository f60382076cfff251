"""tm_iscsi packed for the lab's nodes the offline way an administrator installs a node: files
rendered on the machine from a site file (the nodes have no Jinja2) and a wheel of this checkout,
put where the nodes see them (the run folder is /lab inside a node)."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import config

REPO = config.SOURCE_DIR
# The lab's layout: one storage node with its PV disk, hosts with a cache disk each.
SITE = """\
[cloud]
opennebula = 7.4
oneadmin = oneadmin
frontend = frontend
[storage]
host = storage
vg = vg-one-100
devices = /dev/ubdb
[host]
cache_vg = vg-tm-iscsi-cache
devices = /dev/ubdb
"""
# What goes into the wheel: the packages, and conf/ for its templates (pyproject's data-files).
_WHEEL_SOURCES = ("pyproject.toml", "README.md", "tm_iscsi", "dmcache", "vmm_hooks", "conf")
INSTALL = f"TM_ISCSI_NO_PACKAGES=1 {config.GUEST_SRC_DIR}/install.sh"
LAB_CACHE_VG = "tmi-cache"


def ship(name, site=SITE):
    """Render and build into <run dir>/<name>; returns install.sh's --rendered/--wheel options
    as the nodes see the files."""
    out = config.RUN_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "site.ini").write_text(site)
    subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "--site",
                    str(out / "site.ini"), "--out", str(out / "rendered")], cwd=REPO, check=True)
    with tempfile.TemporaryDirectory() as stage:
        for item in _WHEEL_SOURCES:
            src = REPO / item
            if src.is_dir():
                shutil.copytree(src, Path(stage) / item,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(src, Path(stage) / item)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(out / "wheel"), stage], check=True)
    (wheel,) = (out / "wheel").glob("tm_iscsi-*.whl")
    node_dir = f"/lab/{name}"
    return f"--rendered {node_dir}/rendered --wheel {node_dir}/wheel/{wheel.name}"


def render_node_files():
    """The node helper, its sudoers rule and node.conf rendered from SITE into <run dir>/node-files
    (/lab/node-files on a node), which every node's init puts where install.sh would: so the
    driver reaches the nodes as oneadmin through sudo, as on a real cloud."""
    out = config.RUN_DIR / "node-files"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # The cache VG is the helper's own default (tmi-cache), which the lab tests name; the
    # demo's and test_install's install.sh runs write node.conf from SITE itself.
    (out / "site.ini").write_text(SITE.replace("cache_vg = vg-tm-iscsi-cache",
                                               f"cache_vg = {LAB_CACHE_VG}"))
    subprocess.run([sys.executable, "-m", "tm_iscsi.config_render", "--site",
                    str(out / "site.ini"), "--out", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return out


def unship(name):
    shutil.rmtree(config.RUN_DIR / name, ignore_errors=True)
