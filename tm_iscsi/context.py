"""What one front-end action works with: settings, the oned client and node handles, created
lazily so that parsing errors never wait on the network."""
from . import dsconf, log, settings as settings_mod
from .remote import Node


INITIATOR_ATTR = "ISCSI_INITIATOR"


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
        """The host's iSCSI initiator name: oned's record of it (ISCSI_INITIATOR in the host's
        template) when there is one, else asked of the host once and recorded there, so the
        next action needs no call for it."""
        if host not in self._initiators:
            recorded, host_id = self._recorded_initiator(host)
            if recorded:
                self._initiators[host] = recorded
            else:
                self.learn_initiator(host, self.node(host).call("initiator")["iqn"], host_id)
        return self._initiators[host]

    def learn_initiator(self, host, iqn, host_id=None):
        self._initiators[host] = iqn
        if host_id is None:
            _, host_id = self._recorded_initiator(host)
        if host_id is not None:
            try:
                self.one.host_update(host_id, {INITIATOR_ATTR: iqn})
            except Exception as err:  # noqa: BLE001 - a cache only; the action goes on
                log.info(f"could not record {INITIATOR_ATTR} of {host} in oned: {err}")
        return iqn

    def _recorded_initiator(self, host):
        """(ISCSI_INITIATOR or None, host id or None) from oned's host pool."""
        try:
            hosts = self.one.host_pool()
        except Exception as err:  # noqa: BLE001 - oned not reachable: ask the host instead
            log.info(f"oned's host pool is not readable ({err}); asking {host} for its initiator")
            return None, None
        for element in hosts:
            if (element.findtext("NAME") or "") == host:
                value = (element.findtext("TEMPLATE/" + INITIATOR_ATTR) or "").strip()
                host_id = element.findtext("ID")
                return value or None, int(host_id) if host_id and host_id.isdigit() else None
        return None, None

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
