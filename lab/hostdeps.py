"""Debian packages the machine itself needs to run the lab, installed on first use."""
import shutil
import subprocess
import sys

# command that must exist -> Debian package that ships it
REQUIRED = {
    "linux.uml": "user-mode-linux",
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def missing_packages():
    return sorted({pkg for cmd, pkg in REQUIRED.items() if shutil.which(cmd) is None})


def ensure():
    packages = missing_packages()
    if not packages:
        return
    print(f"lab: installing {' '.join(packages)}", file=sys.stderr)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=sys.stderr)
    still = missing_packages()
    if still:
        raise SystemExit(f"lab: packages {still} did not provide their commands")
