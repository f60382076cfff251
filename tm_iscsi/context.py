"""What one front-end action works with: settings, the oned client and node handles, created
lazily so that parsing errors never wait on the network."""
from . import dsconf, settings as settings_mod
from .remote import Node


class ActionContext:
    def __init__(self, settings=None, one=None):
        self.settings = settings or settings_mod.load()
        self._one = one
        self._nodes = {}
        self._datastores = {}
        self._initiators = {}

    @property
    def one(self):
        if self._one is None:
            from .one.client import OneClient
            self._one = OneClient.from_environment()
        return self._one

    def node(self, host):
        if host not in self._nodes:
            self._nodes[host] = Node(host, self.settings)
        return self._nodes[host]

    def initiator(self, host):
        """The host's iSCSI initiator name, asked once per action: it does not change while an
        action runs, and a cached disk exports up to three LUNs to the same host."""
        if host not in self._initiators:
            self._initiators[host] = self.node(host).call("initiator")["iqn"]
        return self._initiators[host]

    def datastore(self, ds_id):
        ds_id = int(ds_id)
        if ds_id not in self._datastores:
            self._datastores[ds_id] = dsconf.from_datastore(self.one.datastore_info(ds_id),
                                                            self.settings)
        return self._datastores[ds_id]

    def vm(self, vm_id):
        return self.one.vm_info(int(vm_id))

    def is_frontend(self, host):
        return self.settings.is_frontend(host)
