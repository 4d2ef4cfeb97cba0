"""`serve --ports-file`: with port 0 the kernel picks the ports, and the file says which (the way
test harnesses and tools find a sidecar without choosing a port that someone else may take)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from sidecar.testing import wait_until

from .conftest import REPO, check


def test_ports_file_names_the_ports_bound_for_port_0(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    log = tmp_path / "sidecar.log"
    cmd = [
        sys.executable, "-m", "sidecar", "serve", "--simulate",
        "--grpc-port", "0", "--http-port", "0", "--grpc-host", "127.0.0.1",
        "--state-dir", str(tmp_path / "state"), "--ports-file", str(ports_file),
        "--log-level", "warning",
    ]  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:

        def written() -> bool:
            assert proc.poll() is None, log.read_text()
            return ports_file.exists()

        wait_until(written, timeout=30)
        doc = json.loads(ports_file.read_text())
        assert doc["pid"] == proc.pid
        assert doc["grpc_port"] > 0 and doc["http_port"] > 0 and doc["grpc_tls_port"] is None
        # the ports are the ones it serves on (the startup service is SERVING once it started)
        assert check(f"127.0.0.1:{doc['grpc_port']}", "startup") == 1
        conn = http.client.HTTPConnection("127.0.0.1", doc["http_port"], timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status in (200, 503)  # readiness may still be loading
        conn.close()
        assert "sidecar started" not in log.read_text()  # found without reading the log
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
