"""OpenNebula documents for the stand-in, made from the captured ones: a host, a VM with another
id and placements, an image."""
import xml.etree.ElementTree as ET

from . import fixtures

VG = "vg-one-100"


def host_xml(host_id, name, state=2, vm_ids=(), initiator=None):
    host = ET.Element("HOST")
    for tag, value in (("ID", host_id), ("NAME", name), ("STATE", state), ("IM_MAD", "kvm"),
                       ("VM_MAD", "kvm"), ("CLUSTER_ID", 0)):
        ET.SubElement(host, tag).text = str(value)
    vms = ET.SubElement(host, "VMS")
    for vm_id in vm_ids:
        ET.SubElement(vms, "ID").text = str(vm_id)
    template = ET.SubElement(host, "TEMPLATE")
    ET.SubElement(template, "HOSTNAME").text = name
    if initiator:
        ET.SubElement(template, "ISCSI_INITIATOR").text = initiator
    return ET.tostring(host, encoding="unicode")


def vm_xml(vm_id=0, state=3, lcm=3, hosts=("host1",), disks=None):
    """The captured VM of 04-vm-deploy with another id, state and placements (a HISTORY each)."""
    root = ET.fromstring((fixtures.folder("04-vm-deploy") / "01-tm-clone.vm.xml").read_text())
    root.find("ID").text = str(vm_id)
    root.find("STATE").text = str(state)
    root.find("LCM_STATE").text = str(lcm)
    template = root.find("TEMPLATE")
    if disks is not None:
        for disk in template.findall("DISK"):
            if int(disk.findtext("DISK_ID")) not in disks:
                template.remove(disk)
    records = root.find("HISTORY_RECORDS")
    first = records.find("HISTORY")
    records.remove(first)
    for seq, name in enumerate(hosts):
        history = ET.fromstring(ET.tostring(first))
        history.find("SEQ").text = str(seq)
        history.find("OID").text = str(vm_id)
        history.find("HOSTNAME").text = name
        history.find("HID").text = {"host1": "0", "host2": "1"}.get(name, "9")
        records.append(history)
    return ET.tostring(root, encoding="unicode")


def image_xml(image_id, source=None, state=1, name=None):
    root = ET.fromstring((fixtures.folder("01-image-create-from-path") / "image-0.after.xml")
                         .read_text())
    root.find("ID").text = str(image_id)
    root.find("NAME").text = name or f"image-{image_id}"
    root.find("SOURCE").text = source if source is not None else f"{VG}/img-{image_id}"
    root.find("STATE").text = str(state)
    return ET.tostring(root, encoding="unicode")
