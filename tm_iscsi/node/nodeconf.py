"""/etc/tm_iscsi/node.conf, written by install.sh from the site file: KEY=VALUE lines saying
what this node is (ROLES) and which VGs it uses (CACHE_VG on a host). A node set up by hand has
no file, and the built-in defaults apply."""
import os

PATH = os.environ.get("TM_ISCSI_NODE_CONF", "/etc/tm_iscsi/node.conf")


def values(path=PATH):
    out = {}
    try:
        with open(path) as conf:
            for line in conf:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, _, value = line.partition("=")
                    out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def get(key, default, path=PATH):
    return values(path).get(key) or default
