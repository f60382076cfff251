"""What a test or the demo holds of a running lab: run things on its nodes and check them."""
import json


NODE_SRC = "/opt/tm_iscsi"
NODE_PYTHON = "/opt/tm_iscsi-venv/bin/python"


class LabSession:
    """What a lab test holds: run things on nodes and check them."""

    def __init__(self, api):
        self.api = api

    def sh(self, node, script, check=True, timeout=300, input=None):
        """Run a bash script on a node (strict mode); return its stdout as text."""
        payload = "set -euo pipefail\n" + script
        result = self.api.exec_(node, ["bash", "-c", payload], input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{node}: exit {result.returncode}\n--- script\n{script}\n--- stderr\n"
                f"{result.stderr.decode(errors='replace')}")
        return result if not check else result.stdout.decode(errors="replace")

    def node_helper(self, node, *args, input=None, timeout=300, check=True):
        """Run `tm-iscsi-node ARGS` on a node from the checkout; return its JSON object (check) or
        the CompletedProcess (check=False)."""
        argv = ["env", f"PYTHONPATH={NODE_SRC}", NODE_PYTHON, "-m", "tm_iscsi.node", *args]
        result = self.api.exec_(node, argv, input=input, timeout=timeout)
        if not check:
            return result
        if result.returncode != 0:
            raise AssertionError(f"{node}: tm-iscsi-node {' '.join(args)} exit "
                                 f"{result.returncode}: {result.stderr.decode(errors='replace')}")
        return json.loads(result.stdout)

    def run(self, node, argv, check=False, timeout=300, input=None):
        result = self.api.exec_(node, argv, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{node}: {argv} exit {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace')}")
        return result
