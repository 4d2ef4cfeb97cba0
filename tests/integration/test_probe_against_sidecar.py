"""`probe` against the sidecar's own server (not only the stock servicer): codes agree."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar.core.values import CheckResult, Severity

from .conftest import REPO, AppThread


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "probe", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("service", "extra", "code", "text"),
    [
        ("liveness", [], 0, "status: SERVING"),
        ("startup", ["-gzip"], 0, "status: SERVING"),
        ("gpu", [], 4, 'service unhealthy (responded with "NOT_SERVING")'),
        ("readiness", [], 4, 'service unhealthy (responded with "NOT_SERVING")'),
        ("no-such", [], 3, "error: health rpc failed: rpc error: code = NotFound"),
    ],
)
def test_probe_exit_codes(app: AppThread, service: str, extra: list[str], code: int, text: str) -> None:
    """Exit codes and messages match grpc_health_probe against our server."""
    app.submit(
        CheckResult.failed(
            "gpu/GPU-1/xid",
            "XidFatal79",
            "fell off the bus",
            severity=Severity.FATAL,
            gates=frozenset({"readiness", "gpu"}),
        )
    )
    res = probe(f"-addr={app.addr}", f"-service={service}", "-rpc-header", "x-probe: 1", *extra)
    assert res.returncode == code, res.stderr
    assert text in res.stderr
