"""oned access through pyone, found and authenticated the way the Ruby OCA and the CLI do it.

Driver scripts run as oneadmin on the front-end with no configuration of their own, so they must
find oned exactly where ``onevm show`` would (reference §9):

- endpoint: ``$ONE_XMLRPC``, else ``~/.one/one_endpoint``, else ``/var/lib/one/.one/one_endpoint``,
  else ``http://localhost:2633/RPC2``;
- credentials: the file named by ``$ONE_AUTH``, else ``~/.one/one_auth``, else
  ``/var/lib/one/.one/one_auth``;
- timeout: ``$ONE_XMLRPC_TIMEOUT`` seconds (as the OCA), else 30 s: oned sets no timeout on
  driver actions, so a hung oned must not hang the action.

pyone builds the session argument, casts template dicts and turns XML-RPC faults into
exceptions; its ``_do_request`` hook (the one pyone's own OneServerTester overrides) returns
oned's raw reply ``[ok, payload, errcode, ...]``, so the views of `objects` get the XML string
oned sent instead of pyone's generated bindings. pyone's own ``timeout`` only sets the socket
default, which the requests library it posts with overrides, so this module installs a
transport with a real per-call timeout.
"""

import os
import xml.etree.ElementTree as ET
import xml.parsers.expat
import xmlrpc.client

import requests

from .errors import (
    OneConfigError,
    OnedAuthError,
    OnedError,
    OnedNoSuchObject,
    OnedUnreachable,
    one_line,
    show_value,
)
from .objects import Datastore, Image, VirtualMachine

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
DEFAULT_TIMEOUT = 30.0
ONEADMIN_ONE_DIR = "/var/lib/one/.one"

# OpenNebula XML-RPC error codes (reply[2] when reply[0] is false).
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000


# --------------------------------------------------------------------------------------------
# Where oned is and who we are
# --------------------------------------------------------------------------------------------


def _home_file(environ, name):
    home = environ.get("HOME")
    return os.path.join(home, ".one", name) if home else None


def resolve_endpoint(environ=None, oneadmin_dir=ONEADMIN_ONE_DIR):
    """The XML-RPC endpoint, in the Ruby OCA's order of precedence."""
    environ = os.environ if environ is None else environ
    # The OCA also takes an empty $ONE_XMLRPC literally; an empty endpoint can only fail, so
    # here it counts as unset.
    if environ.get("ONE_XMLRPC"):
        return environ["ONE_XMLRPC"].rstrip()
    for candidate in (_home_file(environ, "one_endpoint"), os.path.join(oneadmin_dir, "one_endpoint")):
        if candidate and os.path.exists(candidate):
            return _read_config_file(candidate, "endpoint")
    return DEFAULT_ENDPOINT


def resolve_session(environ=None, oneadmin_dir=ONEADMIN_ONE_DIR):
    """The ``user:password`` session string, in the Ruby OCA's order of precedence."""
    environ = os.environ if environ is None else environ
    candidates = []
    if environ.get("ONE_AUTH"):
        candidates.append(environ["ONE_AUTH"])
    candidates.append(_home_file(environ, "one_auth"))
    candidates.append(os.path.join(oneadmin_dir, "one_auth"))
    for candidate in candidates:
        # Like the OCA, a $ONE_AUTH that is not a regular file is skipped, not an error.
        if candidate and os.path.isfile(candidate):
            session = _read_config_file(candidate, "credentials")
            if not session:
                raise OneConfigError("OpenNebula credentials file %s is empty" % candidate)
            return session
    raise OneConfigError(
        "no OpenNebula credentials: set ONE_AUTH to a file holding user:password, "
        "or create ~/.one/one_auth or %s" % os.path.join(oneadmin_dir, "one_auth")
    )


def resolve_timeout(environ=None):
    environ = os.environ if environ is None else environ
    value = environ.get("ONE_XMLRPC_TIMEOUT")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise OneConfigError("ONE_XMLRPC_TIMEOUT=%s is not a number of seconds" % show_value(value))
    if seconds <= 0:
        raise OneConfigError("ONE_XMLRPC_TIMEOUT=%s must be positive" % show_value(value))
    return seconds


def _read_config_file(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().rstrip()
    except OSError as err:
        raise OneConfigError("cannot read OpenNebula %s file %s: %s" % (what, path, err.strerror))


# --------------------------------------------------------------------------------------------
# pyone with a deadline
# --------------------------------------------------------------------------------------------


class _DeadlineTransport(xmlrpc.client.Transport):
    """Posts with requests like pyone does, but with a timeout on connect and on read."""

    def __init__(self, scheme, timeout, verify_tls):
        super().__init__()
        self._scheme = scheme
        self._timeout = timeout
        self._verify_tls = verify_tls

    def request(self, host, handler, request_body, verbose=False):
        if not handler.startswith("/"):
            handler = "/" + handler
        reply = requests.post(
            "%s://%s%s" % (self._scheme, host, handler),
            data=request_body,
            headers={"Content-Type": "text/xml", "Accept": "*/*"},
            timeout=self._timeout,
            verify=self._verify_tls,
        )
        if reply.status_code != 200:
            raise xmlrpc.client.ProtocolError(host + handler, reply.status_code, reply.reason, reply.headers)
        parser, unmarshaller = self.getparser()
        parser.feed(reply.content)
        parser.close()
        return unmarshaller.close()


def _pyone_xmlrpc_class():
    import pyone

    try:
        # pyone >= 7.2: OneServer is a factory that may pick gRPC; take the XML-RPC class.
        from pyone.server_xrpc import OneServerXRPC

        return OneServerXRPC
    except ImportError:
        # pyone 6.x: OneServer is the XML-RPC proxy itself.
        return pyone.OneServer


def _make_server(endpoint, session, timeout, verify_tls):
    server = _pyone_xmlrpc_class()(endpoint, session)
    scheme = "https" if endpoint.lower().startswith("https") else "http"
    # The stdlib ServerProxy keeps its transport in this (name-mangled) attribute; pyone only
    # lets its own requests transport be built, so it is swapped after construction.
    server._ServerProxy__transport = _DeadlineTransport(scheme, timeout, verify_tls)
    return server


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class OneClient:
    """Calls to oned returning the views of `objects`; every failure is a one-line `OnedError`."""

    def __init__(self, endpoint=None, session=None, timeout=None, verify_tls=True):
        self.endpoint = endpoint or resolve_endpoint()
        if not self.endpoint.lower().startswith(("http://", "https://")):
            raise OneConfigError(
                "OpenNebula endpoint %s is not an http(s) XML-RPC URL" % show_value(self.endpoint)
            )
        self.timeout = timeout or resolve_timeout()
        self._server = _make_server(self.endpoint, session or resolve_session(), self.timeout, verify_tls)

    @classmethod
    def from_environment(cls, environ=None, oneadmin_dir=ONEADMIN_ONE_DIR):
        return cls(
            resolve_endpoint(environ, oneadmin_dir),
            resolve_session(environ, oneadmin_dir),
            resolve_timeout(environ),
        )

    def call(self, method, *params):
        """``one.<method>(session, *params)``; the payload of a successful reply."""
        import pyone

        shown = "one.%s(%s)" % (method, ", ".join(_show_param(p) for p in params))
        try:
            reply = self._server._do_request("one." + method, self._server._cast_parms(params))
        except requests.Timeout:
            raise OnedUnreachable("oned at %s did not answer %s within %gs" % (self.endpoint, shown, self.timeout))
        except requests.ConnectionError as err:
            raise OnedUnreachable("cannot reach oned at %s: %s" % (self.endpoint, _root_cause(err)))
        except requests.RequestException as err:
            raise OnedUnreachable("request to oned at %s failed: %s" % (self.endpoint, _root_cause(err)))
        except xmlrpc.client.ProtocolError as err:
            raise OnedUnreachable(
                "oned at %s answered HTTP %d %s to %s" % (self.endpoint, err.errcode, err.errmsg, shown)
            )
        except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as err:
            raise OnedUnreachable("oned at %s sent a malformed reply to %s: %s" % (self.endpoint, shown, err))
        except pyone.OneException as err:  # pyone's wrapping of an XML-RPC fault
            raise OnedError("oned rejected %s: %s" % (shown, err))
        return _payload(reply, shown)

    # -- typed reads -------------------------------------------------------------------------

    def vm_info(self, vm_id):
        return _checked(VirtualMachine.from_xml(self._xml("vm.info", vm_id)), vm_id)

    def datastore_info(self, ds_id):
        # decrypt: oned keeps DATASTORE_ENCRYPTED_ATTR values (the CHAP secret) encrypted and
        # hands them in clear only to an admin who asks (SharedAPI info, oned 7.4).
        return _checked(Datastore.from_xml(self._xml("datastore.info", ds_id, True)), ds_id)

    def image_info(self, image_id):
        return _checked(Image.from_xml(self._xml("image.info", image_id)), image_id)

    def system_version(self):
        return str(self.call("system.version"))

    # -- writes --------------------------------------------------------------------------------

    def image_allocate(self, template, ds_id):
        """Register an image (template text or flat dict) in datastore ``ds_id``; its id."""
        return _as_id(self.call("image.allocate", template, int(ds_id)), "image.allocate")

    def hook_allocate(self, template):
        """Register a hook (template text or flat dict); its id."""
        return _as_id(self.call("hook.allocate", template), "hook.allocate")

    # -- pools and the calls of the admin tools and hooks ---------------------------------------

    def vm_pool(self, state=-1):
        """Every VM with its full body (``infoextended``: the short form has no DISK/SOURCE), in
        ``state``: -1 every state but DONE, -2 every state."""
        return [VirtualMachine(e) for e in self._pool("vmpool.infoextended", "VM", -2, -1, -1, int(state))]

    def image_pool(self):
        return [Image(e) for e in self._pool("imagepool.info", "IMAGE", -2, -1, -1)]

    def datastore_pool(self):
        return [Datastore(e) for e in self._pool("datastorepool.info", "DATASTORE")]

    def host_pool(self):
        """The HOST elements (there is no typed view of hosts)."""
        return self._pool("hostpool.info", "HOST")

    def host_info(self, host_id):
        return self._element("host.info", host_id, "HOST")

    def host_update(self, host_id, template, merge=True):
        """Set host template attributes (text or flat dict); merge keeps the others."""
        return _as_id(self.call("host.update", int(host_id), template, 1 if merge else 0), "host.update")

    def vm_update(self, vm_id, template, merge=True):
        """Set attributes of the VM's USER_TEMPLATE (what one.vm.update changes)."""
        return _as_id(self.call("vm.update", int(vm_id), template, 1 if merge else 0), "vm.update")

    def template_info(self, template_id):
        """The VMTEMPLATE element (there is no typed view of templates)."""
        return self._element("template.info", template_id, "VMTEMPLATE")

    def hook_pool(self):
        return self._pool("hookpool.info", "HOOK", -2, -1, -1)

    def hook_update(self, hook_id, template, merge=False):
        return _as_id(self.call("hook.update", int(hook_id), template, 1 if merge else 0), "hook.update")

    def template_instantiate(self, template_id, name="", hold=False, extra=""):
        """Instantiate VM template ``template_id``; the new VM's id."""
        return _as_id(self.call("template.instantiate", int(template_id), name, bool(hold), extra, False),
                      "template.instantiate")

    def image_clone(self, image_id, name, ds_id=-1):
        """``oneimage clone``: a new image of the same content (the datastore's clone); its id."""
        return _as_id(self.call("image.clone", int(image_id), name, int(ds_id)), "image.clone")

    def image_delete(self, image_id):
        """``oneimage delete`` (the datastore's rm)."""
        return self.call("image.delete", int(image_id), False)

    def vm_allocate(self, template, hold=False):
        """``onevm create``: a new VM from a template text; its id."""
        return _as_id(self.call("vm.allocate", template, bool(hold)), "vm.allocate")

    def vm_deploy(self, vm_id, host_id):
        """``onevm deploy``: a pending or held VM onto this host (the scheduler not asked)."""
        return _as_id(self.call("vm.deploy", int(vm_id), int(host_id), False, -1), "vm.deploy")

    def vm_action(self, action, vm_id):
        """``onevm <action>`` (terminate, terminate-hard, ...)."""
        return self.call("vm.action", action, int(vm_id))

    def _pool(self, method, tag, *params):
        payload = self.call(method, *params)
        if not isinstance(payload, str) or not payload.lstrip().startswith("<"):
            raise OnedError("oned answered one.%s with %s, not XML" % (method, show_value(payload)))
        try:
            root = ET.fromstring(payload)
        except ET.ParseError as err:
            raise OnedError("oned answered one.%s with malformed XML: %s" % (method, err))
        return root.findall(tag)

    def _element(self, method, object_id, tag):
        try:
            root = ET.fromstring(self._xml(method, object_id))
        except ET.ParseError as err:
            raise OnedError("oned answered one.%s(%d) with malformed XML: %s" % (method, object_id, err))
        if root.tag != tag:
            raise OnedError("oned answered one.%s(%d) with <%s>, not <%s>" % (method, object_id, root.tag, tag))
        return root

    def _xml(self, method, object_id, *extra):
        payload = self.call(method, int(object_id), *extra)
        if not isinstance(payload, str) or not payload.lstrip().startswith("<"):
            raise OnedError("oned answered one.%s(%d) with %s, not XML" % (method, object_id, show_value(payload)))
        return payload


def _show_param(param):
    if isinstance(param, str) and len(param) > 20:
        return "<template>"
    return repr(param) if isinstance(param, str) else str(param)


def _root_cause(err):
    """The innermost OS error under a requests exception (``Connection refused``), else its text.

    requests wraps urllib3's retry error, which wraps the connection error, which is caused by
    the socket error: only the last one says what an administrator needs to know.
    """
    seen = set()
    pending = [err]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for nested in (getattr(current, "reason", None), current.__cause__, current.__context__) + tuple(
            current.args
        ):
            if isinstance(nested, BaseException):
                pending.append(nested)
    return one_line(str(err))


def _payload(reply, shown):
    if not isinstance(reply, (list, tuple)) or len(reply) < 2:
        raise OnedUnreachable("unexpected reply to %s: %s" % (shown, show_value(reply)))
    if reply[0]:
        return reply[1]
    message = one_line(reply[1]) or "no message"
    code = reply[2] if len(reply) > 2 and isinstance(reply[2], int) else None
    if code in (AUTHENTICATION, AUTHORIZATION):
        raise OnedAuthError(message, code)
    if code == NO_EXISTS:
        raise OnedNoSuchObject(message, code)
    raise OnedError(message, code)


def _checked(view, expected_id):
    if view.id != int(expected_id):
        raise OnedError("oned answered a request for id %d with object %d" % (int(expected_id), view.id))
    return view


def _as_id(payload, method):
    if isinstance(payload, bool) or not isinstance(payload, int):
        raise OnedError("oned answered one.%s with %s, not an id" % (method, show_value(payload)))
    return payload


# --------------------------------------------------------------------------------------------
# Module-level shortcuts for action scripts: one client per process, built from the environment.
# --------------------------------------------------------------------------------------------

_default_client = None


def default_client():
    global _default_client
    if _default_client is None:
        _default_client = OneClient.from_environment()
    return _default_client


def vm_info(vm_id, client=None):
    return (client or default_client()).vm_info(vm_id)


def datastore_info(ds_id, client=None):
    return (client or default_client()).datastore_info(ds_id)


def image_info(image_id, client=None):
    return (client or default_client()).image_info(image_id)


def image_allocate(template, ds_id, client=None):
    return (client or default_client()).image_allocate(template, ds_id)


def hook_allocate(template, client=None):
    return (client or default_client()).hook_allocate(template)
