"""The node root image: one Debian bookworm root shared read-only by every node (each boots it
under its own copy-on-write layer). Built with mmdebstrap, kept in the cache and rebuilt only when
what goes into it changes."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import config

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "lvm2", "thin-provisioning-tools", "dmsetup",
    "targetcli-fb", "python3-rtslib-fb",
    "open-iscsi",
    "python3", "python3-venv",
    "kmod", "iproute2", "procps", "util-linux", "fdisk", "e2fsprogs", "xfsprogs", "udev",
    "openssh-server", "openssh-client", "sudo",
    "qemu-utils", "fio",
)
# Pure-Python wheels the node helper needs beyond Debian's packages, installed into a venv that
# sees the system site-packages (rtslib-fb comes from Debian).
GUEST_WHEELS = ("sh>=2,<3",)
IMAGE_SIZE = "3G"
# How often a long image build says it is still going.
PROGRESS_EVERY_S = 20
INIT_SCRIPT = config.SOURCE_DIR / "lab" / "guest" / "init"


def uml_kernel_version() -> str:
    versions = sorted(os.listdir("/usr/lib/uml/modules"))
    if not versions:
        raise SystemExit("lab: /usr/lib/uml/modules is empty; is user-mode-linux installed?")
    return versions[-1]


def image_key() -> str:
    digest = hashlib.sha256()
    for part in (SUITE, MIRROR, IMAGE_SIZE, *PACKAGES, *GUEST_WHEELS, uml_kernel_version()):
        digest.update(part.encode() + b"\0")
    for hook in _customize_hooks():
        digest.update(hook.encode() + b"\0")
    digest.update(INIT_SCRIPT.read_bytes())
    return digest.hexdigest()[:16]


def image_path() -> Path:
    return config.CACHE_DIR / f"root-{image_key()}.img"


def ensure_image() -> Path:
    path = image_path()
    if path.exists():
        return path
    config.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    print(f"lab: building the node root image {path.name} (mmdebstrap {SUITE}, once: about "
          f"2 minutes and {IMAGE_SIZE}B in {config.CACHE_DIR}; later runs reuse it)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=config.CACHE_DIR, prefix="build-") as build:
        root = Path(build) / "root"
        _debootstrap(root)
        _install_kernel_modules(root)
        _install_init(root)
        partial = Path(build) / "root.img"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "labroot", "-d", str(root),
                        str(partial), IMAGE_SIZE], check=True)
        os.replace(partial, path)
    _prune_old_images(keep=path)
    return path


def _customize_hooks():
    venv = config.GUEST_VENV
    wheels = " ".join(f'"{w}"' for w in GUEST_WHEELS)
    return [
        f'chroot "$1" python3 -m venv --system-site-packages {venv}',
        # The guest has no route out; the machine's own pip fetches the wheels for it.
        f'python3 -m pip download -q --no-deps -d "$1/tmp/wheels" {wheels}'
        f' && chroot "$1" {venv}/bin/pip install -q --no-index --find-links /tmp/wheels {wheels}'
        ' && rm -rf "$1/tmp/wheels"',
        # The user a real front-end logs in as (OpenNebula's node packages make it, uid 9869);
        # it reaches root only through the sudoers rule install.sh writes (lab/guest/init puts
        # the rendered rule and helper in place at boot).
        'chroot "$1" useradd --system --uid 9869 --user-group --create-home '
        '--home-dir /var/lib/one --shell /bin/bash oneadmin',
        # The venv finds tm_iscsi in the checkout the node mounts at /opt/tm_iscsi, also for
        # the helper's `python -I` (isolated mode ignores PYTHONPATH, not .pth files); a wheel
        # that install.sh puts in site-packages comes first.
        f'echo {config.GUEST_SRC_DIR} > "$(echo "$1"{venv}/lib/python3*/site-packages)'
        '/tm_iscsi_lab_checkout.pth"',
        # The package bakes one generated initiator name into the image; every node must have its
        # own (ACLs are per initiator), so init writes it at first boot.
        'rm -f "$1/etc/iscsi/initiatorname.iscsi"',
        # No node ever scans the PVs of a guest or of a thin LV it exports.
        'sed -i "s|^\\(\\s*\\)# scan_lvs = .*|\\1scan_lvs = 0|" "$1/etc/lvm/lvm.conf"',
    ]


def _debootstrap(root: Path):
    argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES)]
    for hook in _customize_hooks():
        argv.append("--customize-hook=" + hook)
    argv += [SUITE, str(root), MIRROR]
    log = config.CACHE_DIR / "mmdebstrap.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                returncode = proc.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                print(f"lab: building the node root image: {time.monotonic() - started:.0f} s "
                      f"(log: {log})", file=sys.stderr, flush=True)
    if returncode != 0:
        raise SystemExit(f"lab: mmdebstrap failed (exit {returncode}); see {log}")


def _install_kernel_modules(root: Path):
    version = uml_kernel_version()
    # Merged-/usr root: the modules folder must end up as usr/lib/modules/<version>, not as
    # usr/lib/modules itself.
    dest_parent = root / "usr" / "lib" / "modules"
    dest_parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(f"/usr/lib/uml/modules/{version}", dest_parent / version, symlinks=True)
    subprocess.run(["chroot", str(root), "depmod", "-a", version], check=True)


def _install_init(root: Path):
    target = root / "sbin" / "lab-init"
    shutil.copy2(INIT_SCRIPT, target)
    target.chmod(0o755)


def _prune_old_images(keep: Path):
    for old in config.CACHE_DIR.glob("root-*.img"):
        if old != keep:
            old.unlink()
