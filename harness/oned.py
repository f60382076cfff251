"""An oned stand-in: the XML-RPC calls the driver makes, answered from registered XML documents.

It speaks oned's wire protocol as pyone sees it: method names ``one.<object>.<verb>``, the session
string as first parameter, replies ``[True, payload, 0]`` or ``[False, message, errcode]`` with
OpenNebula's error codes and message style. It serves only on 127.0.0.1, on a free port, from a
thread, for the life of a ``with`` block.

Documents are registered as XML text (typically the captures in shared/fixtures) and can be
edited between calls, so a test can put a VM into another LCM state or on another host.
"""

import re
import socketserver
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

# OpenNebula XML-RPC error codes.
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000

# Object kind -> (root tag, noun oned uses in its messages)
_KINDS = {
    "vm": ("VM", "virtual machine"),
    "datastore": ("DATASTORE", "datastore"),
    "image": ("IMAGE", "image"),
    "host": ("HOST", "host"),
    "hook": ("HOOK", "hook"),
    "template": ("VMTEMPLATE", "template"),
}
# Pool documents: kind -> (pool root tag, info method).
_POOLS = {
    "vm": ("VM_POOL", "one.vmpool.info"),
    "datastore": ("DATASTORE_POOL", "one.datastorepool.info"),
    "image": ("IMAGE_POOL", "one.imagepool.info"),
    "host": ("HOST_POOL", "one.hostpool.info"),
    "hook": ("HOOK_POOL", "one.hookpool.info"),
    "template": ("VMTEMPLATE_POOL", "one.templatepool.info"),
}
VM_DONE = 6
# put_xml serves the objects the driver reads; hosts, hooks and VM templates (what the admin
# tools and hooks read) go through put_document.
_DRIVER_KINDS = ("vm", "datastore", "image")
_KIND_OF_ROOT = {root: kind for kind, (root, _noun) in _KINDS.items() if kind in _DRIVER_KINDS}
_ANY_KIND_OF_ROOT = {root: kind for kind, (root, _noun) in _KINDS.items()}

_TEMPLATE_LINE = re.compile(r'^\s*([A-Za-z0-9_]+)\s*=\s*"?(.*?)"?\s*$')
_DS_MONITOR_KEPT = ("TOTAL_MB", "FREE_MB", "USED_MB")
HOST_MONITORED = 2
# One attribute of oned's template syntax on a line: NAME = "value" (no unescaped quote inside)
# or NAME = word; vectors NAME = [ ... ] on one line.
_PROBE_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'
                         r'([^\s"\[\]=,]+)|(\[.*\]))\s*$')


def _new_vm_xml(vm_id, name, hold, template):
    """A VM as oned has it right after it was created: PENDING (or HOLD), never placed."""
    vm = ET.Element("VM")
    for tag, value in (("ID", vm_id), ("NAME", name), ("STATE", 2 if hold else 1),
                       ("LCM_STATE", 0), ("PREV_STATE", 0), ("PREV_LCM_STATE", 0),
                       ("DEPLOY_ID", "")):
        ET.SubElement(vm, tag).text = str(value)
    vm.append(template)
    ET.SubElement(vm, "USER_TEMPLATE")
    ET.SubElement(vm, "HISTORY_RECORDS")
    return ET.tostring(vm, encoding="unicode")


def _add_history(root, vm_id, host_name, host_id):
    records = root.find("HISTORY_RECORDS")
    if records is None:
        records = ET.SubElement(root, "HISTORY_RECORDS")
    history = ET.SubElement(records, "HISTORY")
    for tag, value in (("OID", vm_id), ("SEQ", len(records) - 1), ("HOSTNAME", host_name),
                       ("HID", host_id)):
        ET.SubElement(history, tag).text = str(value)


def parse_probe_template(payload):
    """[(NAME, value)] of the single attributes of a probe's output; a line oned's template
    parser would refuse makes oned drop the whole payload, so it raises ValueError here."""
    attributes = []
    for number, line in enumerate(payload.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROBE_LINE.match(line)
        if not match:
            raise ValueError(f"line {number} is not oned template syntax: {line[:80]!r}")
        if match.group(4) is not None:
            continue   # a vector: kept by oned, not modelled here
        value = match.group(2) if match.group(2) is not None else match.group(3)
        attributes.append((match.group(1).upper(), re.sub(r'\\(.)', r'\1', value)))
    return attributes


class _QuietHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2", "/")

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    # A request held by an injected delay must not keep the test (or shutdown) waiting.
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # The client gave up (timeout tests): nothing to report.
        pass


class OnedStandIn:
    """``with OnedStandIn() as oned:`` ... ``oned.endpoint``, ``oned.env(tmp_path)``."""

    def __init__(self, session="oneadmin:stand-in-password", version="7.4.0"):
        self.session = session
        self.version = version
        self.calls = []  # (method, params after the session), in arrival order
        self.allocated_images = []  # (image id, template, ds id)
        self.allocated_hooks = []  # (hook id, template)
        # DATASTORE_ENCRYPTED_ATTR of the oned.conf tm_iscsi registers: shown encrypted unless
        # one.datastore.info is asked to decrypt (SharedAPI, oned 7.4).
        self.encrypted_attrs = {"ISCSI_CHAP_PASSWORD"}
        self.instantiated = []  # (vm id, template id, name)
        self.vm_actions = []  # (action, vm id)
        self.deleted_images = []  # (image id, its document)
        self._after = {}  # method -> callback(standin, *params), run after the reply is made
        self._documents = {kind: {} for kind in _KINDS}
        self._failures = {}  # method -> [code, message, remaining count or None]
        self._delays = {}  # method -> seconds
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None
        self._next_hook_id = 0

    # -- life cycle ----------------------------------------------------------------------------

    def start(self):
        self._server = _Server(("127.0.0.1", 0), requestHandler=_QuietHandler, logRequests=False, allow_none=True)
        for name, handler in self._handlers().items():
            self._server.register_function(handler, name)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d/RPC2" % self.port

    def write_auth_file(self, directory):
        """Write the session to ``<directory>/one_auth`` the way oneadmin's file looks."""
        path = Path(directory) / "one_auth"
        path.write_text(self.session + "\n", encoding="utf-8")
        return path

    def env(self, directory=None):
        """Environment pointing the Ruby-OCA resolution (and so the driver) at this stand-in."""
        directory = directory or tempfile.mkdtemp(prefix="oned-standin-")
        return {
            "ONE_XMLRPC": self.endpoint,
            "ONE_AUTH": str(self.write_auth_file(directory)),
            # requests would send 127.0.0.1 through a configured proxy otherwise
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    # -- documents -----------------------------------------------------------------------------

    def put_xml(self, xml):
        """Register (or replace) a VM, DATASTORE or IMAGE document; returns (kind, id)."""
        return self._put(xml, _KIND_OF_ROOT)

    def put_document(self, xml):
        """Like put_xml, for HOST, HOOK and VMTEMPLATE documents too."""
        return self._put(xml, _ANY_KIND_OF_ROOT)

    def _put(self, xml, kinds):
        root = ET.fromstring(xml)
        kind = kinds.get(root.tag)
        if kind is None:
            raise ValueError("cannot serve a <%s> document" % root.tag)
        object_id = int(root.findtext("ID"))
        with self._lock:
            self._documents[kind][object_id] = xml if isinstance(xml, str) else xml.decode("utf-8")
        return kind, object_id

    def put_file(self, path):
        return self.put_xml(Path(path).read_text(encoding="utf-8"))

    def put_driver_action(self, xml):
        """Register the IMAGE and DATASTORE held in a decoded DS driver action."""
        root = ET.fromstring(xml)
        registered = []
        for tag in ("IMAGE", "DATASTORE"):
            node = root.find(tag)
            if node is not None and node.findtext("ID"):
                registered.append(self.put_xml(ET.tostring(node, encoding="unicode")))
        return registered

    def xml(self, kind, object_id):
        with self._lock:
            return self._documents[kind][object_id]

    def ids(self, kind):
        with self._lock:
            return sorted(self._documents[kind])

    def remove(self, kind, object_id):
        with self._lock:
            del self._documents[kind][object_id]

    def edit(self, kind, object_id, path, value):
        """Set the text of the element at ``path`` (ElementTree syntax, e.g.
        ``"HISTORY_RECORDS/HISTORY[last()]/HOSTNAME"``); the element must exist."""

        def change(root):
            node = root.find(path)
            if node is None:
                raise KeyError("%s %d has no element %s" % (kind, object_id, path))
            node.text = str(value)

        self.edit_with(kind, object_id, change)

    def edit_with(self, kind, object_id, change):
        """Apply ``change(root_element)`` to a document."""
        with self._lock:
            root = ET.fromstring(self._documents[kind][object_id])
            change(root)
            self._documents[kind][object_id] = ET.tostring(root, encoding="unicode")

    # -- what oned does with its drivers' reports -----------------------------------------------

    def host_system_info(self, host_id, payload):
        """A host's system probes' output as oned keeps it (InformationManager::_host_system,
        Host::update_info, Template::merge in 7.4): the whole payload parsed as one template, or
        nothing of it kept (ValueError); each attribute replaces the host template's attributes
        of its name and none is ever removed."""
        attributes = parse_probe_template(payload)
        names = {name for name, _value in attributes}

        def change(root):
            template = root.find("TEMPLATE")
            if template is None:
                template = ET.SubElement(root, "TEMPLATE")
            for child in list(template):
                if child.tag in names:
                    template.remove(child)
            for name, value in attributes:
                ET.SubElement(template, name).text = value

        self.edit_with("host", host_id, change)

    def datastore_monitored(self, ds_id, payload):
        """A datastore monitor's output as oned keeps it (Datastore::update_monitor): TOTAL_MB,
        FREE_MB and USED_MB on the datastore. Anything else oned drops without a word; here it is
        refused (ValueError), so a driver cannot rely on a figure oned never records."""
        kept = {}
        for line in payload.splitlines():
            if not line.strip():
                continue
            match = _TEMPLATE_LINE.match(line)
            name = match.group(1) if match else line.strip()[:40]
            if not match or name not in _DS_MONITOR_KEPT:
                raise ValueError(f"oned keeps only {', '.join(_DS_MONITOR_KEPT)} of a datastore "
                                 f"monitor; it would drop {name!r}")
            kept[name] = match.group(2)

        def change(root):
            for name, value in kept.items():
                node = root.find(name)
                if node is None:
                    node = ET.SubElement(root, name)
                node.text = value

        self.edit_with("datastore", ds_id, change)

    def place(self, vm_id):
        """The rank scheduler's choice for a pending VM: among the hosts oned monitors (STATE
        MONITORED), the one with the highest USER_TEMPLATE/SCHED_RANK (harness.rank); the stand-in
        breaks ties by the lower host id. A HISTORY record for the host is added to the VM, as
        oned does when it dispatches the deployment; returns the host's name."""
        from harness import rank
        with self._lock:
            vm = ET.fromstring(self._documents["vm"][vm_id])
            hosts = [ET.fromstring(xml) for _id, xml in sorted(self._documents["host"].items())]
        expression = vm.findtext("USER_TEMPLATE/SCHED_RANK") or ""
        usable = [h for h in hosts if h.findtext("STATE") == str(HOST_MONITORED)]
        if not usable:
            raise ValueError(f"no host to place VM {vm_id} on")
        ranked = sorted(usable, key=lambda h: (-rank.evaluate(expression, h),
                                               int(h.findtext("ID"))))
        chosen = ranked[0]
        self.edit_with("vm", vm_id, lambda root: _add_history(
            root, vm_id, chosen.findtext("NAME"), chosen.findtext("ID")))
        return chosen.findtext("NAME")

    # -- fault injection -----------------------------------------------------------------------

    def fail(self, method, code, message, times=1):
        """Answer the next ``times`` calls of ``method`` (None: all) with ``[False, message, code]``."""
        with self._lock:
            self._failures[method] = [code, message, times]

    def after(self, method, callback):
        """Call ``callback(standin, *params)`` after each successful ``method`` call: a test plays
        oned's asynchronous side (a VM reaching RUNNING after instantiate, DONE after terminate)."""
        with self._lock:
            self._after[method] = callback

    def delay(self, method, seconds):
        """Hold replies to ``method`` for ``seconds`` (for client timeout tests)."""
        with self._lock:
            self._delays[method] = seconds

    # -- XML-RPC methods -------------------------------------------------------------------------

    def _handlers(self):
        handlers = {
            "one.system.version": self._guarded("one.system.version", lambda: [True, self.version, 0]),
            "one.image.allocate": self._guarded("one.image.allocate", self._image_allocate),
            "one.image.clone": self._guarded("one.image.clone", self._image_clone),
            "one.image.delete": self._guarded("one.image.delete", self._image_delete),
            "one.hook.allocate": self._guarded("one.hook.allocate", self._hook_allocate),
            "one.hook.update": self._guarded("one.hook.update", self._hook_update),
            "one.host.update": self._guarded("one.host.update", self._update_for("host", "one.host.update")),
            "one.vm.update": self._guarded("one.vm.update",
                                           self._update_for("vm", "one.vm.update", "USER_TEMPLATE")),
            "one.vmpool.infoextended": self._guarded(
                "one.vmpool.infoextended", self._pool_for("vm", "one.vmpool.infoextended")),
            "one.template.instantiate": self._guarded("one.template.instantiate", self._template_instantiate),
            "one.vm.action": self._guarded("one.vm.action", self._vm_action),
            "one.vm.allocate": self._guarded("one.vm.allocate", self._vm_allocate),
            "one.vm.deploy": self._guarded("one.vm.deploy", self._vm_deploy),
        }
        for kind in _KINDS:
            method = "one.%s.info" % kind
            handlers[method] = self._guarded(method, self._info_for(kind, method))
        for kind, (_root, method) in _POOLS.items():
            handlers[method] = self._guarded(method, self._pool_for(kind, method))
        return handlers

    def _guarded(self, method, body):
        def handler(session, *params):
            with self._lock:
                self.calls.append((method, params))
                delay = self._delays.get(method)
                failure = self._failures.get(method)
                if failure:
                    if failure[2] is not None:
                        failure[2] -= 1
                        if failure[2] <= 0:
                            del self._failures[method]
            if delay:
                self._stopping.wait(delay)
            if session != self.session:
                return [False, "[%s] User couldn't be authenticated, aborting call." % method, AUTHENTICATION]
            if failure:
                return [False, failure[1], failure[0]]
            try:
                reply = body(*params)
            except TypeError:
                return [False, "[%s] Wrong number or type of parameters." % method, XML_RPC_API]
            with self._lock:
                callback = self._after.get(method)
            if callback and reply[0]:
                callback(self, *params)
            return reply

        return handler

    def _info_for(self, kind, method):
        noun = _KINDS[kind][1]

        def info(object_id, *decrypt):
            if isinstance(object_id, bool) or not isinstance(object_id, int):
                raise TypeError(object_id)
            with self._lock:
                xml = self._documents[kind].get(object_id)
            if xml is None:
                return [False, "[%s] Error getting %s [%d]." % (method, noun, object_id), NO_EXISTS]
            if kind == "datastore" and not (decrypt and decrypt[0] is True):
                xml = _encrypted(xml, self.encrypted_attrs)
            return [True, xml, 0]

        return info

    def _pool_for(self, kind, method):
        root_tag = _POOLS[kind][0]

        def pool(*params):
            # vmpool: (filter, start, end, state[, filter string]); image/hook/template pools:
            # (filter, start, end); datastore/host pools: no parameters. The ownership filter
            # is not modelled: the stand-in's only user is oneadmin.
            if any(isinstance(p, bool) or not isinstance(p, int) for p in params[:4]):
                raise TypeError(params)
            start, end = (params[1], params[2]) if len(params) >= 3 else (-1, -1)
            state = params[3] if kind == "vm" and len(params) >= 4 else -2
            parts = []
            with self._lock:
                for object_id in sorted(self._documents[kind]):
                    if start >= 0 and object_id < start or end >= 0 and object_id > end:
                        continue
                    xml = self._documents[kind][object_id]
                    if kind == "vm" and state != -2:
                        vm_state = int(ET.fromstring(xml).findtext("STATE") or -1)
                        # -1: every state but DONE (oned's default listing)
                        if (state == -1 and vm_state == VM_DONE) or (state >= 0 and vm_state != state):
                            continue
                    if kind == "datastore":
                        xml = _encrypted(xml, self.encrypted_attrs)   # pools never decrypt
                    parts.append(xml)
            return [True, "<%s>%s</%s>" % (root_tag, "".join(parts), root_tag), 0]

        return pool

    def _update_for(self, kind, method, section="TEMPLATE"):
        """one.<kind>.update: replace (merge=0) or merge the template; a VM's is its
        USER_TEMPLATE (oned's one.vm.update)."""
        noun = _KINDS[kind][1]

        def update(object_id, template, merge=0):
            if isinstance(object_id, bool) or not isinstance(object_id, int) or not isinstance(template, str):
                raise TypeError(object_id)
            with self._lock:
                if object_id not in self._documents[kind]:
                    return [False, "[%s] Error getting %s [%d]." % (method, noun, object_id), NO_EXISTS]
                attributes = _template_attributes(template)

                def change(root):
                    node = root.find(section)
                    if node is None:
                        node = ET.SubElement(root, section)
                    if not merge:
                        for child in list(node):
                            node.remove(child)
                    for key, value in attributes.items():
                        child = node.find(key)
                        if child is None:
                            child = ET.SubElement(node, key)
                        child.text = value

                self.edit_with(kind, object_id, change)
            return [True, object_id, 0]

        return update

    def _template_instantiate(self, template_id, name="", hold=False, extra="", *_persistent):
        if isinstance(template_id, bool) or not isinstance(template_id, int):
            raise TypeError(template_id)
        with self._lock:
            xml = self._documents["template"].get(template_id)
            if xml is None:
                return [False, "[one.template.instantiate] Error getting template [%d]." % template_id, NO_EXISTS]
            vm_id = max(self._documents["vm"], default=-1) + 1
            source = ET.fromstring(xml)
            template = source.find("TEMPLATE")
            template = ET.fromstring(ET.tostring(template)) if template is not None else ET.Element("TEMPLATE")
            for disk_id, disk in enumerate(template.findall("DISK")):
                if disk.find("DISK_ID") is None:
                    ET.SubElement(disk, "DISK_ID").text = str(disk_id)
            self._documents["vm"][vm_id] = _new_vm_xml(
                vm_id, name or "%s-%d" % (source.findtext("NAME"), vm_id), hold, template)
            self.instantiated.append((vm_id, template_id, name))
        return [True, vm_id, 0]

    def _vm_allocate(self, template, hold=False):
        """onevm create: a VM whose TEMPLATE holds the template's single attributes and DISKs
        (the vectors the stand-in models), PENDING or HOLD."""
        if not isinstance(template, str) or not isinstance(hold, bool):
            raise TypeError(template)
        attributes = _template_attributes(template)
        disks = [dict(re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', body))
                 for body in re.findall(r'^\s*DISK\s*=\s*\[(.*?)\]', template, re.M | re.S)]
        if not disks:
            return [False, "[one.vm.allocate] No DISK in template.", INTERNAL]
        with self._lock:
            vm_id = max(self._documents["vm"], default=-1) + 1
            node = ET.Element("TEMPLATE")
            for disk_id, disk in enumerate(disks):
                element = ET.SubElement(node, "DISK")
                for key, value in dict(disk, DISK_ID=str(disk_id)).items():
                    ET.SubElement(element, key.upper()).text = value
            self._documents["vm"][vm_id] = _new_vm_xml(
                vm_id, attributes.get("NAME", "one-%d" % vm_id), hold, node)
        return [True, vm_id, 0]

    def _vm_deploy(self, vm_id, host_id, enforce=False, ds_id=-1, *_extra):
        """onevm deploy: a PENDING or HOLD VM onto a host (a HISTORY record; the deployment
        itself is played by whoever registered an `after` callback)."""
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (vm_id, host_id)):
            raise TypeError(vm_id)
        with self._lock:
            if vm_id not in self._documents["vm"]:
                return [False, "[one.vm.deploy] Error getting virtual machine [%d]." % vm_id, NO_EXISTS]
            host = self._documents["host"].get(host_id)
            if host is None:
                return [False, "[one.vm.deploy] Error getting host [%d]." % host_id, NO_EXISTS]
            vm = ET.fromstring(self._documents["vm"][vm_id])
            # VirtualMachineAPI::deploy (7.4): PENDING, HOLD, STOPPED or UNDEPLOYED.
            if vm.findtext("STATE") not in ("1", "2", "4", "9"):
                return [False, "[one.vm.deploy] Deploy action is not available for state %s"
                        % _vm_state_name(vm.findtext("STATE")), ACTION]
        name = ET.fromstring(host).findtext("NAME")
        self.edit_with("vm", vm_id, lambda root: _add_history(root, vm_id, name, host_id))
        return [True, vm_id, 0]

    def _vm_action(self, action, vm_id):
        if not isinstance(action, str) or isinstance(vm_id, bool) or not isinstance(vm_id, int):
            raise TypeError(action)
        with self._lock:
            if vm_id not in self._documents["vm"]:
                return [False, "[one.vm.action] Error getting virtual machine [%d]." % vm_id, NO_EXISTS]
            self.vm_actions.append((action, vm_id))
        return [True, vm_id, 0]

    def _image_allocate(self, template, ds_id, *_no_capacity_check):
        if not isinstance(template, str) or isinstance(ds_id, bool) or not isinstance(ds_id, int):
            raise TypeError(template)
        with self._lock:
            ds_xml = self._documents["datastore"].get(ds_id)
            if ds_xml is None:
                return [False, "[one.image.allocate] Error getting datastore [%d]." % ds_id, NO_EXISTS]
            attributes = _template_attributes(template)
            if "NAME" not in attributes:
                return [False, "[one.image.allocate] No NAME in template for Image.", ACTION]
            # oned: one image NAME per owner (ImagePool::allocate); the stand-in's callers are
            # oneadmin (UID 0).
            for other_id, other_xml in sorted(self._documents["image"].items()):
                other = ET.fromstring(other_xml)
                if other.findtext("NAME") == attributes["NAME"] and other.findtext("UID", "0") == "0":
                    return [False, "[one.image.allocate] NAME is already taken by IMAGE %d." % other_id,
                            INTERNAL]
            image_id = max(self._documents["image"], default=-1) + 1
            ds_name = ET.fromstring(ds_xml).findtext("NAME") or ""
            self._documents["image"][image_id] = _new_image_xml(image_id, attributes, ds_id, ds_name)
            self.allocated_images.append((image_id, template, ds_id))
        return [True, image_id, 0]

    def _image_clone(self, image_id, name, ds_id=-1, *_no_capacity_check):
        """oneimage clone: a new image LOCKED until the datastore's clone answered (whoever
        registered an `after` callback plays that), PATH the origin's SOURCE."""
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (image_id, ds_id)) or \
                not isinstance(name, str):
            raise TypeError(image_id)
        with self._lock:
            xml = self._documents["image"].get(image_id)
            if xml is None:
                return [False, "[one.image.clone] Error getting image [%d]." % image_id, NO_EXISTS]
            origin = ET.fromstring(xml)
            for other in self._documents["image"].values():
                if ET.fromstring(other).findtext("NAME") == name:
                    return [False, "[one.image.clone] NAME is already taken.", INTERNAL]
            new_id = max(self._documents["image"], default=-1) + 1
            clone = ET.fromstring(xml)
            clone.find("ID").text = str(new_id)
            clone.find("NAME").text = name
            clone.find("STATE").text = "4"
            clone.find("SOURCE").text = ""
            path = clone.find("PATH")
            if path is None:
                path = ET.SubElement(clone, "PATH")
            path.text = origin.findtext("SOURCE")
            self._documents["image"][new_id] = ET.tostring(clone, encoding="unicode")
        return [True, new_id, 0]

    def _image_delete(self, image_id, force=False):
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise TypeError(image_id)
        with self._lock:
            if image_id not in self._documents["image"]:
                return [False, "[one.image.delete] Error getting image [%d]." % image_id, NO_EXISTS]
            self.deleted_images.append((image_id, self._documents["image"].pop(image_id)))
        return [True, image_id, 0]

    def _hook_allocate(self, template):
        if not isinstance(template, str):
            raise TypeError(template)
        attributes = _template_attributes(template)
        missing = [name for name in ("NAME", "TYPE", "COMMAND") if name not in attributes]
        if missing:
            return [False, "[one.hook.allocate] Error allocating hook: missing %s." % missing[0], INTERNAL]
        error = _hook_state_on_allocate(attributes)
        if error:
            return [False, "[one.hook.allocate] " + error, INTERNAL]
        with self._lock:
            hook_id = max([self._next_hook_id] + [i + 1 for i in self._documents["hook"]])
            self._next_hook_id = hook_id + 1
            self.allocated_hooks.append((hook_id, template))
            self._documents["hook"][hook_id] = _new_hook_xml(hook_id, attributes)
        return [True, hook_id, 0]


    def _hook_update(self, hook_id, template, merge=0):
        """oned's Hook::post_update_template: the new template must hold COMMAND and, for a state
        hook, a valid STATE (and LCM_STATE for a VM hook); ON is not read on update."""
        if isinstance(hook_id, bool) or not isinstance(hook_id, int) or not isinstance(template, str):
            raise TypeError(hook_id)
        with self._lock:
            xml = self._documents["hook"].get(hook_id)
        if xml is not None:
            old = ET.fromstring(xml)
            new = dict(_template_attributes(template))
            if merge:
                new = dict({c.tag: c.text or "" for c in old.find("TEMPLATE")}, **new)
            error = _hook_state_on_update(old.findtext("TYPE", ""), new)
            if error:
                return [False, "[one.hook.update] Cannot update template. " + error, INTERNAL]
        return self._update_for("hook", "one.hook.update")(hook_id, template, merge)


# The VM states a state hook's ON names (HookStateVM::parse_template, oned 7.4).
_VM_HOOK_ON = {"PROLOG": ("ACTIVE", "PROLOG"), "RUNNING": ("ACTIVE", "RUNNING"),
               "SHUTDOWN": ("ACTIVE", "EPILOG"), "STOP": ("STOPPED", "LCM_INIT"),
               "DONE": ("DONE", "LCM_INIT"), "UNKNOWN": ("ACTIVE", "UNKNOWN")}
_HOST_STATES = {"INIT", "MONITORING_MONITORED", "MONITORED", "ERROR", "DISABLED",
                "MONITORING_ERROR", "MONITORING_INIT", "MONITORING_DISABLED", "OFFLINE"}


def _vm_state_name(number):
    from tm_iscsi.one.states import VmState
    return VmState(int(number)).name


def _vm_states():
    from tm_iscsi.one.states import LcmState, VmState
    return {s.name for s in VmState}, {s.name for s in LcmState}


def _hook_state_on_allocate(attributes):
    """What oned does with a state hook's template on allocate: a VM hook's ON becomes STATE and
    LCM_STATE (ON itself is erased); a host hook needs a valid STATE. Returns an error or None."""
    if attributes.get("TYPE", "").lower() != "state":
        return None
    resource = attributes.get("RESOURCE", "").upper()
    if resource == "VM":
        on = attributes.pop("ON", "").upper()
        if on == "CUSTOM":
            states, lcm_states = _vm_states()
            if attributes.get("STATE") not in states:
                return "Wrong STATE: " + attributes.get("STATE", "")
            if attributes.get("LCM_STATE") not in lcm_states:
                return "Wrong LCM_STATE: " + attributes.get("LCM_STATE", "")
        elif on in _VM_HOOK_ON:
            attributes["STATE"], attributes["LCM_STATE"] = _VM_HOOK_ON[on]
        else:
            return "Unkown state condition: " + on
    elif resource == "HOST":
        if attributes.get("STATE", "").upper() not in _HOST_STATES:
            return "Invalid STATE: " + attributes.get("STATE", "")
    return None


def _hook_state_on_update(hook_type, attributes):
    if not attributes.get("COMMAND"):
        return "The COMMAND attribute is not defined."
    if hook_type.lower() != "state":
        return None
    resource = attributes.get("RESOURCE", "").upper()
    if resource == "VM":
        states, lcm_states = _vm_states()
        if attributes.get("STATE") not in states:
            return "The STATE attribute is not defined or it's invalid."
        if attributes.get("LCM_STATE") not in lcm_states:
            return "The LCM_STATE attribute is not defined or it's invalid."
    elif resource == "HOST" and attributes.get("STATE") not in _HOST_STATES:
        return "The STATE attribute is not defined or it's invalid."
    return None


def _encrypted(xml, names):
    """The document as oned shows it without decrypt: the encrypted attributes' values are
    ciphertext (base64 here, AES in oned; either way not the secret)."""
    import base64
    root = ET.fromstring(xml)
    changed = False
    for name in names:
        for node in root.findall("TEMPLATE/" + name):
            if node.text:
                node.text = base64.b64encode(b"one-encrypted:" + node.text.encode()).decode()
                changed = True
    return ET.tostring(root, encoding="unicode") if changed else xml


def _template_attributes(template):
    """Top-level ``KEY = "value"`` pairs of an OpenNebula template (enough for NAME checks)."""
    attributes = {}
    for line in template.splitlines():
        match = _TEMPLATE_LINE.match(line)
        if match:
            attributes[match.group(1).upper()] = match.group(2)
    return attributes


def _new_image_xml(image_id, attributes, ds_id, ds_name):
    """A freshly allocated image as oned shows it before the DS cp/mkfs answered: LOCKED, no SOURCE."""
    image = ET.Element("IMAGE")
    for tag, value in (
        ("ID", image_id),
        ("NAME", attributes["NAME"]),
        ("TYPE", {"OS": 0, "CDROM": 1, "DATABLOCK": 2}.get(attributes.get("TYPE", "OS").upper(), 0)),
        ("PERSISTENT", 1 if attributes.get("PERSISTENT", "").upper() == "YES" else 0),
        ("SOURCE", ""),
        ("PATH", attributes.get("PATH", "")),
        ("FORMAT", attributes.get("FORMAT", "")),
        ("SIZE", attributes.get("SIZE", "")),
        ("STATE", 4),
        ("DATASTORE_ID", ds_id),
        ("DATASTORE", ds_name),
    ):
        ET.SubElement(image, tag).text = str(value)
    template = ET.SubElement(image, "TEMPLATE")
    for key, value in attributes.items():
        ET.SubElement(template, key).text = value
    return ET.tostring(image, encoding="unicode")


def _new_hook_xml(hook_id, attributes):
    """A hook as oned lists it: NAME and TYPE on top, every attribute in TEMPLATE."""
    hook = ET.Element("HOOK")
    ET.SubElement(hook, "ID").text = str(hook_id)
    ET.SubElement(hook, "NAME").text = attributes["NAME"]
    ET.SubElement(hook, "TYPE").text = attributes["TYPE"]
    template = ET.SubElement(hook, "TEMPLATE")
    for key, value in attributes.items():
        ET.SubElement(template, key).text = value
    ET.SubElement(hook, "HOOKLOG")
    return ET.tostring(hook, encoding="unicode")
