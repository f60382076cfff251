"""oned's side of a VM's life for tests and benchmarks that go through oned's API (`tm-iscsi
deploy`, the smoke test): what oned, its scheduler and one_tm do after `one.template.instantiate`,
`one.vm.allocate`, `one.vm.deploy` and `terminate-hard`, against the real lab.

A watcher thread looks at the stand-in's VMs: a PENDING one is placed (the stand-in's rank
scheduler, `OnedStandIn.place`), a placed one gets its body as oned would show it (the captured VM
of 04-vm-deploy with the image of its first disk) and its transfer, `CLONE` of disk 0, run by the
one_tm stand-in, at most `max_transfers` at once (one_tm's `-t 15`); RUNNING when the transfer
succeeded, PROLOG_FAILURE with the driver's error when not. A terminated VM's disk and directory
are deleted (`DELETE`), then it is DONE."""
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

from harness.cloud import IMAGE_VG
from harness.documents import vm_xml

PENDING, HOLD, ACTIVE, DONE = "1", "2", "3", "6"
PROLOG, RUNNING, PROLOG_FAILURE, EPILOG_FAILURE = 1, 3, 39, 40
SYSTEM_DS, IMAGE_DS = 101, 100


class Lifecycle:
    def __init__(self, cloud, max_transfers=15, poll=0.2):
        self.cloud, self.oned = cloud, cloud.oned
        self.poll = poll
        self.pool = ThreadPoolExecutor(max_workers=max_transfers)
        self.handled = set()
        self.terminating = set()
        self.errors = []
        self._actions_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.pool.shutdown(wait=True)

    # -- the watcher ---------------------------------------------------------------------------

    def _watch(self):
        while not self._stop.is_set():
            try:
                self._look()
            except Exception as err:   # noqa: BLE001 - reported to the test, never swallowed
                self.errors.append(repr(err))
            self._stop.wait(self.poll)

    def _look(self):
        for vm_id in self.oned.ids("vm"):
            if vm_id in self.handled:
                continue
            vm = ET.fromstring(self.oned.xml("vm", vm_id))
            placed = vm.find("HISTORY_RECORDS/HISTORY") is not None
            if vm.findtext("STATE") == PENDING or (vm.findtext("STATE") == HOLD and placed):
                self.handled.add(vm_id)
                self.pool.submit(self._guarded, self._deploy, vm_id, placed)
        actions = self.oned.vm_actions[self._actions_seen:]
        self._actions_seen += len(actions)
        for action, vm_id in actions:
            if action.startswith("terminate") and vm_id not in self.terminating:
                self.terminating.add(vm_id)
                self.pool.submit(self._guarded, self._terminate, vm_id)

    def _guarded(self, job, *args):
        try:
            job(*args)
        except Exception as err:   # noqa: BLE001
            self.errors.append(f"{job.__name__}{args}: {err!r}")

    # -- what oned does ------------------------------------------------------------------------

    def _deploy(self, vm_id, placed):
        host = self._host_of(vm_id) if placed else self.oned.place(vm_id)
        image_id = self._image_of(vm_id)
        self.oned.put_xml(self._body(vm_id, host, image_id, PROLOG))
        result = self.cloud.tm_action(
            f"CLONE iscsi_lvm frontend:{IMAGE_VG}/img-{image_id} "
            f"{host}:/var/lib/one//datastores/{SYSTEM_DS}/{vm_id}/disk.0 {vm_id} {IMAGE_DS}")
        if result.success:
            self._set_state(vm_id, ACTIVE, RUNNING)
        else:
            self._set_state(vm_id, ACTIVE, PROLOG_FAILURE, error=result.info)

    def _terminate(self, vm_id):
        deadline = time.monotonic() + 600
        while vm_id in self.handled and time.monotonic() < deadline:
            vm = ET.fromstring(self.oned.xml("vm", vm_id))
            if vm.findtext("LCM_STATE") != str(PROLOG):
                break
            time.sleep(self.poll)   # oned ends the running transfer before the terminate's
        vm = ET.fromstring(self.oned.xml("vm", vm_id))
        if vm.find("HISTORY_RECORDS/HISTORY") is not None and vm.findtext("STATE") == ACTIVE:
            host = self._host_of(vm_id)
            for line in (f"DELETE iscsi_lvm {host}:/var/lib/one//datastores/{SYSTEM_DS}/{vm_id}/"
                         f"disk.0 {vm_id} {IMAGE_DS}",
                         f"DELETE iscsi_lvm {host}:/var/lib/one//datastores/{SYSTEM_DS}/{vm_id} "
                         f"{vm_id} {SYSTEM_DS}"):
                result = self.cloud.tm_action(line)
                if not result.success:
                    self._set_state(vm_id, ACTIVE, EPILOG_FAILURE, error=result.info)
                    return
        self._set_state(vm_id, DONE, 0)

    # -- documents -----------------------------------------------------------------------------

    def _host_of(self, vm_id):
        vm = ET.fromstring(self.oned.xml("vm", vm_id))
        return vm.findall("HISTORY_RECORDS/HISTORY")[-1].findtext("HOSTNAME")

    def _image_of(self, vm_id):
        vm = ET.fromstring(self.oned.xml("vm", vm_id))
        return int(vm.findtext("TEMPLATE/DISK/IMAGE_ID") or 0)

    def _body(self, vm_id, host, image_id, lcm):
        """The VM as oned shows it once deployed: its name and user template kept."""
        old = ET.fromstring(self.oned.xml("vm", vm_id))
        root = ET.fromstring(vm_xml(vm_id, state=int(ACTIVE), lcm=lcm, hosts=(host,),
                                    disks=(0,)))
        root.find("NAME").text = old.findtext("NAME")
        disk = root.find("TEMPLATE/DISK")
        disk.find("IMAGE_ID").text = str(image_id)
        disk.find("SOURCE").text = f"{IMAGE_VG}/img-{image_id}"
        image = ET.fromstring(self.oned.xml("image", image_id))
        disk.find("SIZE").text = image.findtext("SIZE")
        user = old.find("USER_TEMPLATE")
        if user is not None:
            root.remove(root.find("USER_TEMPLATE"))
            root.append(user)
        return ET.tostring(root, encoding="unicode")

    def _set_state(self, vm_id, state, lcm, error=None):
        def change(root):
            root.find("STATE").text = str(state)
            root.find("LCM_STATE").text = str(lcm)
            if error:
                user = root.find("USER_TEMPLATE")
                node = user.find("ERROR")
                if node is None:
                    node = ET.SubElement(user, "ERROR")
                node.text = error
        self.oned.edit_with("vm", vm_id, change)
