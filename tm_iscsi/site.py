"""The site file: the few facts about one cloud that every generated file is made from.

INI, read with configparser (no dependency beyond the standard library, so install.sh can use it
on a bare node). Every value is checked here, once: the values end up in sudoers, lvm.conf,
oned.conf and shell files, where a stray quote or space would change their meaning, so anything
outside the expected shape is refused rather than escaped. See conf/site.example.ini.
"""
import configparser
import os
import re
from dataclasses import dataclass, field
from typing import List

from . import dsconf, naming, protocol

DRIVER = "iscsi_lvm"
CACHE_MODES = protocol.MODES
VERSIONS = ("7.4", "6.10")

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_PORTAL_RE = re.compile(r"^[A-Za-z0-9.:\[\]-]+$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_IQN_RE = re.compile(r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*[a-z0-9](:[a-z0-9.:-]+)?$")
# A device path goes into an LVM regex and a shell word: letters, digits and a few separators.
_DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9_.:+@/-]+$")
_ABS_PATH_RE = re.compile(r"^/[A-Za-z0-9_.+/-]+$")
_DS_NAME_RE = re.compile(r"^[A-Za-z0-9_.+ -]{1,128}$")
# The secret goes into the datastore templates in double quotes: no quote, backslash or blank.
# (What the nodes accept is naming.valid_chap_secret, a superset.)
_CHAP_SECRET_RE = re.compile(r"^[A-Za-z0-9_.+:@!%^*=-]{1,255}$")
# ssh options end up as one KEY=VALUE line read by tm_iscsi.settings (shell words, no newline).
_SSH_OPTS_RE = re.compile(r"^[A-Za-z0-9 _.,:=/@%+-]*$")

SCHEMA = {
    "cloud": ("opennebula", "oneadmin", "frontend", "datastore_location"),
    "storage": ("host", "portal", "vg", "thin_pool", "pool_percent", "devices"),
    "host": ("cache_vg", "devices", "initiator_prefix", "warm_every_minutes", "warm_seconds"),
    "datastore": ("image_name", "system_name", "cache_mode", "iqn_base", "bridge_list",
                  "chap_user", "chap_password", "writeback_checkpoint",
                  "writeback_on_host_loss"),
    "lvm": ("system_devices",),
    "frontend": ("ssh_opts", "ssh_timeout", "attach_timeout", "copy_timeout",
                 "transaction_timeout", "max_pool_fill"),
    "iscsi": ("replacement_timeout", "noop_out_interval", "noop_out_timeout", "login_timeout",
              "login_retry_max"),
    "install": ("venv",),
}


class SiteError(ValueError):
    pass


@dataclass(frozen=True)
class Site:
    path: str
    opennebula: str
    oneadmin: str
    frontend: List[str]
    datastore_location: str
    storage_host: str
    portal: str
    vg: str
    thin_pool: str
    pool_percent: int
    storage_devices: List[str]
    cache_vg: str
    host_devices: List[str]
    initiator_prefix: str
    warm_every_minutes: int
    warm_seconds: int
    image_name: str
    system_name: str
    cache_mode: str
    writeback_checkpoint: int
    writeback_on_host_loss: str
    iqn_base: str
    bridge_list: List[str]
    chap_user: str
    chap_password: str
    system_devices: List[str]
    ssh_opts: str
    ssh_timeout: int
    attach_timeout: int
    copy_timeout: int
    transaction_timeout: int
    max_pool_fill: int
    replacement_timeout: int
    noop_out_interval: int
    noop_out_timeout: int
    login_timeout: int
    login_retry_max: int
    venv: str
    extra: dict = field(default_factory=dict)

    @property
    def helper(self):
        return "/usr/sbin/tm-iscsi-node"

    def as_context(self):
        ctx = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        ctx["site_file"] = self.path
        ctx["helper"] = self.helper
        return ctx


class _Reader:
    def __init__(self, parser, path):
        self.parser, self.path = parser, path

    def fail(self, section, key, reason):
        raise SiteError(f"site file {self.path}: [{section}] {key}: {reason}")

    def raw(self, section, key, default=""):
        if not self.parser.has_option(section, key):
            return default
        value = self.parser.get(section, key).strip()
        if "\n" in value:
            self.fail(section, key, "must fit on one line")
        return value if value != "" else default

    def text(self, section, key, default, pattern, what):
        value = self.raw(section, key, default)
        if value == "" and default == "":
            return ""
        if not pattern.match(value):
            self.fail(section, key, f"{value!r} is not {what}")
        return value

    def name(self, section, key, default):
        value = self.raw(section, key, default)
        if not naming.valid_name(value):
            self.fail(section, key, f"{value!r} is not a valid LVM name")
        return value

    def integer(self, section, key, default, low, high):
        value = self.raw(section, key, str(default))
        try:
            number = int(value)
        except ValueError:
            self.fail(section, key, f"{value!r} is not a whole number")
        if not low <= number <= high:
            self.fail(section, key, f"{number} is outside {low}..{high}")
        return number

    def items(self, section, key, pattern, what, default=""):
        value = self.raw(section, key, default)
        items = [v.strip() for v in value.split(",") if v.strip()]
        for item in items:
            if not pattern.match(item):
                self.fail(section, key, f"{item!r} is not {what}")
        if len(set(items)) != len(items):
            self.fail(section, key, "lists an item twice")
        return items


def load_site(path):
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None,
                                       empty_lines_in_values=False)
    parser.optionxform = str.lower
    try:
        with open(path) as f:
            parser.read_file(f)
    except OSError as err:
        raise SiteError(f"site file {path}: {err.strerror}")
    except configparser.Error as err:
        raise SiteError(f"site file {path}: {err.message if hasattr(err, 'message') else err}")
    for section in parser.sections():
        if section not in SCHEMA:
            raise SiteError(f"site file {path}: unknown section [{section}] (known: "
                            f"{', '.join(SCHEMA)})")
        for key in parser.options(section):
            if key not in SCHEMA[section]:
                raise SiteError(f"site file {path}: [{section}] {key}: unknown key (known: "
                                f"{', '.join(SCHEMA[section])})")
    r = _Reader(parser, path)

    version = r.raw("cloud", "opennebula", "7.4")
    short = ".".join(version.split(".")[:2])
    if short not in VERSIONS:
        r.fail("cloud", "opennebula", f"{version!r}: tm_iscsi targets {' and '.join(VERSIONS)}")
    frontend = r.items("cloud", "frontend", _HOST_RE, "a host name")
    if not frontend:
        r.fail("cloud", "frontend", "name the front-end as oned knows it")
    storage_host = r.text("storage", "host", "", _HOST_RE, "a host name")
    if not storage_host:
        r.fail("storage", "host", "name the storage node (ISCSI_HOST)")
    cache_mode = r.raw("datastore", "cache_mode", "none").lower()
    if cache_mode not in CACHE_MODES:
        r.fail("datastore", "cache_mode", f"{cache_mode!r} is not one of {', '.join(CACHE_MODES)}")
    on_host_loss = r.raw("datastore", "writeback_on_host_loss", "refuse").lower()
    if on_host_loss not in dsconf.HOST_LOSS_ACTIONS:
        r.fail("datastore", "writeback_on_host_loss",
               f"{on_host_loss!r} is not one of {', '.join(dsconf.HOST_LOSS_ACTIONS)}")
    chap_user = r.raw("datastore", "chap_user", "")
    if chap_user and not naming.valid_chap_user(chap_user):
        # The rule the driver and the nodes apply: a name they would refuse never gets rendered.
        r.fail("datastore", "chap_user",
               f"{chap_user!r} is not a CHAP user name (letters, digits, ._@:+/=-)")
    chap_password = r.raw("datastore", "chap_password", "")
    if chap_password and not _CHAP_SECRET_RE.fullmatch(chap_password):
        # Never echoed: the value is a secret.
        r.fail("datastore", "chap_password", "**** is not a usable CHAP secret: 12 to 255 of "
               "the characters A-Z a-z 0-9 _ . + : @ ! % ^ * = - (no quote, backslash or blank)")
    if bool(chap_user) != bool(chap_password):
        r.fail("datastore", "chap_user", "set both chap_user and chap_password, or neither")
    if chap_password and len(chap_password) < 12:
        # RFC 3720 asks for at least 96 bits; shorter secrets fall to an offline attack.
        r.fail("datastore", "chap_password", "must be at least 12 characters long")
    venv = r.text("install", "venv", "/opt/tm_iscsi-venv", _ABS_PATH_RE, "an absolute path")
    attach_timeout = r.integer("frontend", "attach_timeout", 60, 5, 3600)
    login_timeout = r.integer("iscsi", "login_timeout", 15, 1, 600)
    login_retry_max = r.integer("iscsi", "login_retry_max", 2, 1, 100)
    if login_timeout * login_retry_max >= attach_timeout:
        r.fail("iscsi", "login_timeout", f"{login_retry_max} logins of {login_timeout} s must "
               f"end within [frontend] attach_timeout ({attach_timeout} s)")
    return Site(
        path=os.path.abspath(path),
        opennebula=short,
        oneadmin=r.text("cloud", "oneadmin", "oneadmin", _USER_RE, "a user name"),
        frontend=frontend,
        datastore_location=r.text("cloud", "datastore_location", "/var/lib/one/datastores",
                                  _ABS_PATH_RE, "an absolute path").rstrip("/") or "/",
        storage_host=storage_host,
        portal=r.text("storage", "portal", "", _PORTAL_RE, "a host name or address"),
        vg=r.name("storage", "vg", "vg-one-100"),
        thin_pool=r.name("storage", "thin_pool", naming.THIN_POOL),
        pool_percent=r.integer("storage", "pool_percent", 90, 10, 100),
        storage_devices=r.items("storage", "devices", _DEVICE_RE, "a /dev path"),
        cache_vg=r.name("host", "cache_vg", "vg-tm-iscsi-cache"),
        host_devices=r.items("host", "devices", _DEVICE_RE, "a /dev path"),
        initiator_prefix=r.text("host", "initiator_prefix", "iqn.2005-03.org.open-iscsi",
                                _IQN_RE, "an IQN prefix"),
        warm_every_minutes=r.integer("host", "warm_every_minutes", 5, 1, 60),
        warm_seconds=r.integer("host", "warm_seconds", 60, 5, 3600),
        image_name=r.text("datastore", "image_name", "iscsi_lvm_images", _DS_NAME_RE,
                          "a datastore name"),
        system_name=r.text("datastore", "system_name", "iscsi_lvm_system", _DS_NAME_RE,
                           "a datastore name"),
        cache_mode=cache_mode,
        writeback_checkpoint=r.integer("datastore", "writeback_checkpoint",
                                       dsconf.CHECKPOINT_MIN_DEFAULT, 0,
                                       dsconf.CHECKPOINT_MIN_MAX),
        writeback_on_host_loss=on_host_loss,
        iqn_base=r.text("datastore", "iqn_base", "", _IQN_RE, "an IQN prefix"),
        bridge_list=r.items("datastore", "bridge_list", _HOST_RE, "a host name"),
        chap_user=chap_user,
        chap_password=chap_password,
        system_devices=r.items("lvm", "system_devices", _DEVICE_RE, "a /dev path"),
        ssh_opts=r.text("frontend", "ssh_opts", "", _SSH_OPTS_RE, "plain ssh options"),
        ssh_timeout=r.integer("frontend", "ssh_timeout", 60, 5, 3600),
        attach_timeout=attach_timeout,
        copy_timeout=r.integer("frontend", "copy_timeout", 7200, 60, 7 * 86400),
        transaction_timeout=r.integer("frontend", "transaction_timeout", 600, 30, 86400),
        max_pool_fill=r.integer("frontend", "max_pool_fill", 90, 1, 100),
        replacement_timeout=r.integer("iscsi", "replacement_timeout", 300, 5, 86400),
        noop_out_interval=r.integer("iscsi", "noop_out_interval", 5, 1, 3600),
        noop_out_timeout=r.integer("iscsi", "noop_out_timeout", 15, 1, 3600),
        login_timeout=login_timeout,
        login_retry_max=login_retry_max,
        venv=venv,
    )
