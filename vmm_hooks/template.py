"""The object a state hook is given: oned's `$TEMPLATE`, the base64 XML of the HOST or VM whose
state changed. Also taken as plain XML, or from stdin with `-` (ARGUMENTS_STDIN=yes)."""
import base64
import binascii
import sys
import xml.etree.ElementTree as ET

from tm_iscsi.errors import DriverError


def decode(argument, expected_root, stdin=None):
    """The XML text of `argument` (base64 or XML; "-" reads stdin); its root must be
    `expected_root`."""
    text = argument
    if argument == "-":
        text = (stdin or sys.stdin).read()
    text = text.strip()
    if not text.startswith("<"):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise DriverError("the hook argument is neither base64 nor XML; register the hook "
                              "with ARGUMENTS=\"... $TEMPLATE\" (tm-iscsi-hook register)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise DriverError(f"the hook's $TEMPLATE is not valid XML: {err}")
    if root.tag != expected_root:
        raise DriverError(f"the hook got a <{root.tag}> document, not a <{expected_root}>: is "
                          f"it registered with RESOURCE={expected_root}?")
    return text
