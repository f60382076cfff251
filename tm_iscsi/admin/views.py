"""Read-only views of the oned objects the driver itself never reads: hosts and hooks."""
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# The host template attribute that records a host's iSCSI initiator name, so that a host that
# is down can still be fenced (vmm_hooks/README.md).
INITIATOR_ATTR = "ISCSI_INITIATOR"

HOST_STATES = ("INIT", "MONITORING_MONITORED", "MONITORED", "ERROR", "DISABLED",
               "MONITORING_ERROR", "MONITORING_INIT", "MONITORING_DISABLED", "OFFLINE")


def _text(element, path):
    node = element.find(path)
    if node is None or node.text is None:
        return None
    return node.text.strip() or None


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    state: str
    initiator: Optional[str]
    vm_ids: Tuple[int, ...] = ()
    # What the host probe last reported of its caches (tm_iscsi.hostfacts.of_host).
    cache: Dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_element(cls, element):
        from .. import hostfacts
        number = int(_text(element, "STATE") or -1)
        state = HOST_STATES[number] if 0 <= number < len(HOST_STATES) else f"STATE-{number}"
        return cls(id=int(_text(element, "ID")), name=_text(element, "NAME") or "",
                   state=state, initiator=_text(element, f"TEMPLATE/{INITIATOR_ATTR}"),
                   vm_ids=tuple(int(n.text) for n in element.findall("VMS/ID") if n.text),
                   cache=hostfacts.of_host(element.find("TEMPLATE")))

    @classmethod
    def from_xml(cls, xml):
        root = ET.fromstring(xml)
        if root.tag != "HOST":
            raise ValueError(f"the document is a <{root.tag}>, not a <HOST>")
        return cls.from_element(root)


@dataclass(frozen=True)
class Hook:
    id: int
    name: str
    attributes: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_element(cls, element):
        attributes = {}
        template = element.find("TEMPLATE")
        for child in (template if template is not None else []):
            if len(child) == 0:
                attributes[child.tag.upper()] = (child.text or "").strip()
        for tag in ("NAME", "TYPE"):
            value = _text(element, tag)
            if value is not None:
                attributes[tag] = value
        return cls(id=int(_text(element, "ID")), name=_text(element, "NAME") or "",
                   attributes=attributes)


def one_template(attributes):
    """An OpenNebula template from flat attributes: one KEY = "value" line each, quotes and
    backslashes escaped (what onehook/oneimage create read)."""
    lines = []
    for key, value in attributes.items():
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key} = "{text}"')
    return "\n".join(lines) + "\n"
