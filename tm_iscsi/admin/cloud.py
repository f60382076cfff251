"""The cloud as the admin tools and hooks see it: oned's pools, read once per run; the iscsi_lvm
datastores grouped by storage node and VG; the nodes, reached over SSH (the node helper through
its sudo rule, and plain read-only commands such as `find` without it)."""
import os
import subprocess
from dataclasses import dataclass
from typing import Optional, Tuple

from .. import dsconf, settings as settings_mod, volumes
from ..errors import DriverError
from ..one.errors import OneError
from ..remote import Node
from .views import Host

DRIVER = "iscsi_lvm"


@dataclass(frozen=True)
class DatastoreEntry:
    view: object                     # tm_iscsi.one.objects.Datastore
    config: Optional[dsconf.DatastoreConfig]
    error: Optional[str]

    @property
    def id(self):
        return self.view.id

    @property
    def is_system(self):
        return self.view.is_system


@dataclass(frozen=True)
class StorageGroup:
    """One VG on one storage node, and the datastores that keep their LVs in it."""
    host: str
    vg: str
    pool: str
    portal: str
    iqn_bases: Tuple[str, ...]
    ds_ids: Tuple[int, ...]


class Cloud:
    def __init__(self, one=None, settings=None, node_factory=None, runner=None):
        self.settings = settings or settings_mod.load()
        self._one = one
        self._node_factory = node_factory or (lambda host: Node(host, self.settings))
        # subprocess.run-compatible: the unit tests replace the plain SSH commands with a fake.
        self._runner = runner or subprocess.run
        self._nodes = {}
        self._cached = {}
        self.warnings = []

    # -- oned ----------------------------------------------------------------------------------

    @property
    def one(self):
        if self._one is None:
            from ..one.client import OneClient
            self._one = OneClient.from_environment()
        return self._one

    def _once(self, key, read):
        if key not in self._cached:
            self._cached[key] = read()
        return self._cached[key]

    def datastores(self):
        """Every iscsi_lvm datastore (image or system), with its config or why it has none."""
        def read():
            entries = []
            for ds in self.one.datastore_pool():
                if DRIVER not in (ds.text("TM_MAD"), ds.ds_mad):
                    continue
                try:
                    entries.append(DatastoreEntry(ds, dsconf.from_datastore(ds, self.settings),
                                                  None))
                except (DriverError, OneError) as err:
                    entries.append(DatastoreEntry(ds, None, str(err)))
            return sorted(entries, key=lambda e: e.id)
        return self._once("datastores", read)

    def datastore(self, ds_id):
        """The DatastoreConfig of an iscsi_lvm datastore (what tm_iscsi.volumes asks for)."""
        for entry in self.datastores():
            if entry.id == int(ds_id):
                if entry.config is None:
                    raise DriverError(entry.error)
                return entry.config
        raise DriverError(f"datastore {ds_id} is not an {DRIVER} datastore")

    def storage_groups(self):
        groups = {}
        for entry in self.datastores():
            cfg = entry.config
            if cfg is None:
                continue
            key = (cfg.storage_host, cfg.vg)
            if key not in groups:
                groups[key] = {"pool": cfg.pool, "portal": cfg.portal, "bases": [], "ids": []}
            group = groups[key]
            if cfg.iqn_base not in group["bases"]:
                group["bases"].append(cfg.iqn_base)
            group["ids"].append(cfg.ds_id)
        return [StorageGroup(host, vg, g["pool"], g["portal"], tuple(g["bases"]), tuple(g["ids"]))
                for (host, vg), g in sorted(groups.items())]

    def storage_hosts(self):
        return sorted({g.host for g in self.storage_groups()})

    def system_dirs(self):
        """BASE_PATH of every iscsi_lvm system datastore: where the disk.N links are on hosts."""
        dirs = []
        for entry in self.datastores():
            base = entry.view.text("BASE_PATH")
            if entry.is_system and base:
                dirs.append(os.path.normpath(base))
        return sorted(set(dirs))

    def hosts(self):
        return self._once("hosts", lambda: sorted((Host.from_element(e)
                                                   for e in self.one.host_pool()),
                                                  key=lambda h: h.id))

    def host(self, name_or_id):
        for host in self.hosts():
            if host.name == str(name_or_id) or str(host.id) == str(name_or_id):
                return host
        raise DriverError(f"OpenNebula has no host {name_or_id!r} (onehost list)")

    def vms(self):
        """Every VM that is not DONE, with its full body."""
        return self._once("vms", lambda: self.one.vm_pool(-1))

    def images(self):
        return self._once("images", lambda: self.one.image_pool())

    def volumes_of(self, vm):
        """[(disk id, tm_iscsi.volumes.Volume)] of the VM's iscsi_lvm disks. A disk of another
        driver is none of ours; a disk that cannot be resolved is noted in `warnings`."""
        found = []
        for disk in vm.disks:
            if disk.tm_mad not in (None, DRIVER):
                continue
            try:
                disk_id = disk.disk_id
                found.append((disk_id, volumes.of_disk(self, vm, disk_id)))
            except (DriverError, OneError) as err:
                if disk.tm_mad == DRIVER:
                    self.warnings.append(f"VM {vm.id}: {err}")
        return found

    # -- nodes ---------------------------------------------------------------------------------

    def node(self, host):
        if host not in self._nodes:
            self._nodes[host] = self._node_factory(host)
        return self._nodes[host]

    def shell(self, host, argv, input=None, timeout=None):
        """Run a read-only command on a node as the SSH user (no sudo); the CompletedProcess
        (text). The node helper is for changes; these are for looking around."""
        from ..remote import ssh_command
        command = ssh_command(self.settings.ssh_argv, host, [str(word) for word in argv])
        try:
            return self._runner(command, input=input, capture_output=True, text=True,
                                timeout=timeout or self.settings.ssh_timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", f"{host}: no answer within "
                                               f"{timeout or self.settings.ssh_timeout}s")

    def live_initiator(self, host):
        """The host's initiator name, asked of the host itself; None when it does not answer."""
        try:
            return self.node(host).call("initiator")["iqn"]
        except (DriverError, KeyError, TypeError):
            return None
