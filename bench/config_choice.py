"""Which way to declare the config once: pydantic v2, msgspec, or our own table (measured).

Each candidate reads the same part of the config (the core sections and the ``gpu:`` section:
9 classes, 55 fields, bounds and Go durations) in a fresh interpreter, and reports

- ``import_ms``: importing the library and defining the schema (what every ``serve`` start pays),
  in a bare interpreter (``cold``) and after what ``serve`` loads anyway (``serve``);
- ``rss_kib``: resident memory added by that and by one parse (``/proc/self/statm``);
- ``parse_us``: one parse of the full document (median of many);
- ``errors_reported``: how many of the 8 problems of a bad document one parse reports (the
  sidecar reports every problem at once, each naming its field);
- ``first_message``: what the report says, to compare with ours (``grpc.port: must be <= 65535,
  got 70000``).

"ours" is the real thing: ``sidecar.config.sidecar`` and ``sidecar.gpu.config`` read with
:func:`sidecar.config.fields.read`. The libraries run from a throwaway virtualenv so that the
project never depends on them::

    python3 -m venv /tmp/cfgbench && /tmp/cfgbench/bin/pip install pydantic msgspec
    PYTHONPATH=$PWD python -m bench.config_choice --python /tmp/cfgbench/bin/python

Both libraries' schemas take durations as numbers (the documents here give numbers): Go
duration strings would need a ``BeforeValidator`` (pydantic) or a custom type and a ``dec_hook``
(msgspec), and the sidecar's exact messages a translation of every error type.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

CANDIDATES = ("ours", "pydantic", "msgspec")

GOOD: dict[str, Any] = {
    "grpc": {
        "host": "::",
        "port": 9180,
        "threads": 8,
        "tls": {"port": 9182, "cert_file": "c", "key_file": "k"},
    },
    "http": {"port": 9181, "max_connections": 256, "request_timeout": 5},
    "policy": {"failure_threshold": 2, "success_threshold": 1, "fatal_recovery_threshold": 3},
    "liveness": {"heartbeat_interval": 1, "max_loop_lag": 5},
    "log": {"level": "info", "format": "json"},
    "jitter": 0.1,
    "shutdown_grace": 5,
    "state_dir": "/var/run/x",
    "gpu": {
        "poll_interval": 5,
        "nvml_call_timeout": 2,
        "expected_uuids": ["GPU-1", "GPU-2"],
        "expected_count": 2,
        "xid_report_window": 300,
        "ecc_corrected_warn": 100,
        "thermal_slowdown_c": 85.0,
        "busy_utilization_pct": 90,
        "state_file": "gpu-latches.json",
    },
}
BAD: dict[str, Any] = {
    "grpc": {"port": 70000, "max_watchers": "many", "bogus": 1},
    "http": {"port": -1},
    "policy": {"failure_threshold": 0},
    "jitter": 3,
    "gpu": {"poll_interval": 7200, "typo": 1},
}
BAD_PROBLEMS = 8

_MEASURE = r"""
import json, os, statistics, sys, time
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
GOOD, BAD = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if sys.argv[3] == "serve":
    __PRELOAD__
rss0 = rss_kib()
t0 = time.perf_counter()
__SCHEMA__
import_ms = (time.perf_counter() - t0) * 1000
errors, first = parse(BAD)
assert parse(GOOD)[0] == 0, parse(GOOD)
times = []
for _ in range(300):
    t = time.perf_counter()
    parse(GOOD)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_ms": import_ms, "rss_kib": rss_kib() - rss0,
                  "parse_us": statistics.median(times) * 1e6, "errors_reported": errors, "first_message": first}))
"""

_OURS = r"""
from sidecar.config.fields import read
from sidecar.config.section import ConfigError, Section
from sidecar.config.sidecar import SidecarConfig
from sidecar.gpu.config import GpuConfig
def parse(doc):
    errors = []
    root = Section(doc, "", errors)
    read(GpuConfig, root.sub("gpu"))
    read(SidecarConfig, root)
    return len(errors), (sorted(errors) or [""])[0]
"""

_PYDANTIC = r"""
from typing import Annotated, Literal
from pydantic import BaseModel, ConfigDict, Field, ValidationError
class M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
Port = Annotated[int, Field(ge=0, le=65535)]
Dur = Annotated[float, Field(allow_inf_nan=False)]
MAX = 30 * 86400
class Tls(M):
    port: Port = 9182
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    require_client_cert: bool = False
class Grpc(M):
    host: str = "[::]"
    port: Port = 9180
    unix_socket: str = ""
    threads: int = Field(8, ge=1, le=256)
    max_watchers: int = Field(1000, ge=0)
    list_max_services: int = Field(100, ge=1)
    max_service_name_bytes: int = Field(1024, ge=1)
    reflection: bool = True
    tls: Tls | None = None
class Http(M):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Port = 9181
    max_connections: int = Field(256, ge=1, le=10000)
    request_timeout_s: Dur = Field(5.0, alias="request_timeout", ge=0.01, le=3600)
class Thresholds(M):
    failure_threshold: int = Field(1, ge=1)
    success_threshold: int = Field(1, ge=1)
    fatal_recovery_threshold: int = Field(3, ge=1)
class Liveness(M):
    heartbeat_interval_s: Dur = Field(1.0, alias="heartbeat_interval", ge=0.05, le=60)
    max_loop_lag_s: Dur = Field(5.0, alias="max_loop_lag", ge=0.1, le=600)
class Log(M):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
class Gpu(M):
    enabled: bool = True
    poll_interval_s: Dur = Field(5.0, alias="poll_interval", ge=0.01, le=3600)
    nvml_call_timeout_s: Dur = Field(2.0, alias="nvml_call_timeout", ge=0.001, le=600)
    event_wait_timeout_s: Dur = Field(0.2, alias="event_wait_timeout", ge=0.001, le=10)
    events: bool = True
    expected_uuids: tuple[str, ...] = ()
    expected_count: int | None = Field(None, ge=0)
    multi_gpu_model: bool = False
    multi_node_nvlink: bool = False
    xid_overrides: dict[int, str] = {}
    xid_report_window_s: Dur = Field(300.0, alias="xid_report_window", ge=0, le=MAX)
    ecc_xid_window_s: Dur = Field(5.0, alias="ecc_xid_window", ge=0, le=MAX)
    ecc_corrected_warn: int = Field(100, ge=0)
    ecc_corrected_window_s: Dur = Field(3600.0, alias="ecc_corrected_window", ge=1, le=MAX)
    thermal_slowdown_c: float | None = None
    thermal_shutdown_c: float | None = None
    thermal_sustain_s: Dur = Field(30.0, alias="thermal_sustain", ge=0, le=MAX)
    pcie_replay_warn: int = Field(8, ge=0)
    pcie_replay_window_s: Dur = Field(60.0, alias="pcie_replay_window", ge=1, le=MAX)
    inforom_interval_s: Dur = Field(600.0, alias="inforom_interval", ge=1, le=MAX)
    busy_utilization_pct: float = Field(90.0, ge=0, le=100)
    required_memory_mib: int = Field(640, ge=0)
    state_file: str = "gpu-latches.json"
class Root(M):
    grpc: Grpc = Grpc()
    http: Http = Http()
    policy: Thresholds = Thresholds()
    liveness: Liveness = Liveness()
    log: Log = Log()
    jitter: float = Field(0.1, ge=0, le=0.5)
    shutdown_grace_s: Dur = Field(5.0, alias="shutdown_grace", le=600, ge=0)
    simulate: bool = False
    scenario: str = ""
    state_dir: str = "/var/run/trt-health-sidecar"
    engines_dir: str = ""
    gpu: Gpu = Gpu()
def parse(doc):
    try:
        Root.model_validate(doc)
        return 0, ""
    except ValidationError as exc:
        errs = exc.errors()
        msgs = sorted(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in errs)
        return len(errs), msgs[0]
"""

_MSGSPEC = r"""
from typing import Annotated, Literal
import msgspec
from msgspec import Meta, Struct, field
S = dict(forbid_unknown_fields=True, frozen=True, kw_only=True)
Port = Annotated[int, Meta(ge=0, le=65535)]
def D(lo=0.0, hi=30 * 86400.0):
    return Annotated[float, Meta(ge=lo, le=hi)]
class Tls(Struct, **S):
    port: Port = 9182
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    require_client_cert: bool = False
class Grpc(Struct, **S):
    host: str = "[::]"
    port: Port = 9180
    unix_socket: str = ""
    threads: Annotated[int, Meta(ge=1, le=256)] = 8
    max_watchers: Annotated[int, Meta(ge=0)] = 1000
    list_max_services: Annotated[int, Meta(ge=1)] = 100
    max_service_name_bytes: Annotated[int, Meta(ge=1)] = 1024
    reflection: bool = True
    tls: Tls | None = None
class Http(Struct, **S):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Port = 9181
    max_connections: Annotated[int, Meta(ge=1, le=10000)] = 256
    request_timeout_s: D(0.01, 3600) = field(default=5.0, name="request_timeout")
class Thresholds(Struct, **S):
    failure_threshold: Annotated[int, Meta(ge=1)] = 1
    success_threshold: Annotated[int, Meta(ge=1)] = 1
    fatal_recovery_threshold: Annotated[int, Meta(ge=1)] = 3
class Liveness(Struct, **S):
    heartbeat_interval_s: D(0.05, 60) = field(default=1.0, name="heartbeat_interval")
    max_loop_lag_s: D(0.1, 600) = field(default=5.0, name="max_loop_lag")
class Log(Struct, **S):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
class Gpu(Struct, **S):
    enabled: bool = True
    poll_interval_s: D(0.01, 3600) = field(default=5.0, name="poll_interval")
    nvml_call_timeout_s: D(0.001, 600) = field(default=2.0, name="nvml_call_timeout")
    event_wait_timeout_s: D(0.001, 10) = field(default=0.2, name="event_wait_timeout")
    events: bool = True
    expected_uuids: tuple[str, ...] = ()
    expected_count: Annotated[int, Meta(ge=0)] | None = None
    multi_gpu_model: bool = False
    multi_node_nvlink: bool = False
    xid_overrides: dict[int, str] = {}
    xid_report_window_s: D() = field(default=300.0, name="xid_report_window")
    ecc_xid_window_s: D() = field(default=5.0, name="ecc_xid_window")
    ecc_corrected_warn: Annotated[int, Meta(ge=0)] = 100
    ecc_corrected_window_s: D(1) = field(default=3600.0, name="ecc_corrected_window")
    thermal_slowdown_c: float | None = None
    thermal_shutdown_c: float | None = None
    thermal_sustain_s: D() = field(default=30.0, name="thermal_sustain")
    pcie_replay_warn: Annotated[int, Meta(ge=0)] = 8
    pcie_replay_window_s: D(1) = field(default=60.0, name="pcie_replay_window")
    inforom_interval_s: D(1) = field(default=600.0, name="inforom_interval")
    busy_utilization_pct: Annotated[float, Meta(ge=0, le=100)] = 90.0
    required_memory_mib: Annotated[int, Meta(ge=0)] = 640
    state_file: str = "gpu-latches.json"
class Root(Struct, **S):
    grpc: Grpc = Grpc()
    http: Http = Http()
    policy: Thresholds = Thresholds()
    liveness: Liveness = Liveness()
    log: Log = Log()
    jitter: Annotated[float, Meta(ge=0, le=0.5)] = 0.1
    shutdown_grace_s: D(0, 600) = field(default=5.0, name="shutdown_grace")
    simulate: bool = False
    scenario: str = ""
    state_dir: str = "/var/run/trt-health-sidecar"
    engines_dir: str = ""
    gpu: Gpu = Gpu()
def parse(doc):
    try:
        msgspec.convert(doc, Root, strict=False)
        return 0, ""
    except msgspec.ValidationError as exc:
        return 1, str(exc)
"""

_SCHEMAS = {"ours": _OURS, "pydantic": _PYDANTIC, "msgspec": _MSGSPEC}

# What `serve` has loaded anyway before it reads its config (the stdlib the sidecar uses and the
# domain modules the sections refer to): mode "serve" counts only what the config adds to them.
PRELOAD = (
    "import dataclasses, enum, inspect, pathlib, re, typing; "
    "import sidecar.core.policy, sidecar.gpu.xid, sidecar.runtime.safeload"
)
MODES = ("cold", "serve")


def measure(candidate: str, mode: str, python: str, runs: int) -> dict[str, Any]:
    """Median over ``runs`` fresh interpreters of one candidate: ``cold`` (a bare interpreter)
    or ``serve`` (after :data:`PRELOAD`)."""
    code = _MEASURE.replace("__SCHEMA__", _SCHEMAS[candidate].strip()).replace("__PRELOAD__", PRELOAD)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), PYTHONDONTWRITEBYTECODE="1")
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [python, "-c", code, json.dumps(GOOD), json.dumps(BAD), mode],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1:]}
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = samples[0]
    return {
        "import_ms": round(statistics.median(s["import_ms"] for s in samples), 1),
        "rss_kib": int(statistics.median(s["rss_kib"] for s in samples)),
        "parse_us": round(statistics.median(s["parse_us"] for s in samples), 1),
        "errors_reported": f"{first['errors_reported']} of {BAD_PROBLEMS}",
        "first_message": first["first_message"][:90],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--python", default=sys.executable, help="interpreter with pydantic and msgspec")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", choices=CANDIDATES, action="append", help="measure only these")
    args = ap.parse_args(argv)
    rows = {
        f"{c} ({m})": measure(c, m, args.python, args.runs) for m in MODES for c in (args.only or CANDIDATES)
    }
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
