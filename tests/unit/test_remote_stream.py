"""Streaming a source into a node call: every byte arrives, from a local file or an HTTP
response (whose first body bytes sit in Python's buffer, not in its socket)."""
import dataclasses
import hashlib
import http.server
import threading
import urllib.request

import pytest

from tm_iscsi import settings as settings_mod
from tm_iscsi.errors import DriverError
from tm_iscsi.remote import Node

PAYLOAD = hashlib.sha256(b"seed").digest() * (3 * (1 << 20) // 32 + 7)


def _node(tmp_path, script=None):
    out = tmp_path / "received"
    script = script or f'cat > "{out}"; echo "{{}}"'
    settings = dataclasses.replace(settings_mod.load({"TM_ISCSI_CONF": "/none"}),
                                   ssh_argv=("sh", "-c", script, "sh"))
    return Node("storage", settings), out


@pytest.fixture
def web():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/image"
    server.shutdown()


def test_every_byte_of_an_http_response_reaches_the_node(tmp_path, web):
    node, out = _node(tmp_path)
    for _ in range(3):
        with urllib.request.urlopen(web) as response:
            response.peek(1) if hasattr(response, "peek") else None   # body bytes now buffered
            assert node.call("lv-write", stdin=response) == {}
        assert out.read_bytes() == PAYLOAD


def test_a_local_file_read_ahead_still_arrives_whole(tmp_path):
    source = tmp_path / "image.raw"
    source.write_bytes(PAYLOAD)
    node, out = _node(tmp_path)
    with open(source, "rb") as stream:
        assert stream.read(10) == PAYLOAD[:10]
        stream.seek(0)
        node.call("lv-write", stdin=stream)
    assert out.read_bytes() == PAYLOAD


def test_a_node_that_stops_reading_fails_the_call_without_hanging(tmp_path, web):
    node, _ = _node(tmp_path, script='head -c 100 >/dev/null; echo "short read" >&2; exit 3')
    with urllib.request.urlopen(web) as response:
        with pytest.raises(DriverError, match="short read"):
            node.call("lv-write", stdin=response, timeout=30)
