"""/etc/tm_iscsi/node.conf, written by install.sh from the site file: KEY=VALUE lines saying
what this node is (ROLES) and which VGs it uses (CACHE_VG on a host). A node set up by hand has
no file, and the built-in defaults apply."""
import os

from .. import kvfile

PATH = os.environ.get("TM_ISCSI_NODE_CONF", "/etc/tm_iscsi/node.conf")


def values(path=None):
    try:
        return kvfile.read(path or PATH)
    except OSError:
        return {}   # unreadable: the defaults, as with no file


def get(key, default, path=None):
    return values(path).get(key) or default
