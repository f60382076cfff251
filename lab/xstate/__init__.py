"""The preload that lets Debian 12's user-mode-linux run on a CPU with AMX (xstate_shim.c says
why). Built once into the lab's cache with the machine's gcc, and used only on such a CPU."""
import hashlib
import shutil
import subprocess
from pathlib import Path

from .. import config

SOURCE = Path(__file__).with_name("xstate_shim.c")


def needed(cpuinfo="/proc/cpuinfo"):
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return " amx_tile" in flags


def preload():
    """The path of the shim to put in LD_PRELOAD, or None where the CPU does not need it."""
    if not needed():
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    built = config.CACHE_DIR / f"xstate-shim-{digest}.so"
    if built.exists():
        return built
    if shutil.which("gcc") is None:
        raise SystemExit("lab: this CPU has AMX, and user-mode-linux needs a small preload "
                         "to run on it: install gcc (apt-get install gcc)")
    config.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(".partial")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-ldl"],
                   check=True)
    partial.replace(built)
    return built
