"""Every key of every section, given a bad value: the report names each field with the same
message the hand-written parsers gave (``config_every_field.json`` was recorded from them
before the sections were declared once), and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, parse_config

EXPECTED = Path(__file__).with_name("config_every_field.json")

BAD_DOCUMENTS: list[dict[Any, Any]] = []
# 1: every key of every section a wrong type
BAD_DOCUMENTS.append(
    {
        "grpc": {
            "host": 1,
            "port": "x",
            "unix_socket": 2,
            "threads": 0,
            "max_watchers": -1,
            "list_max_services": 0,
            "max_service_name_bytes": 0,
            "reflection": "maybe",
            "tls": {
                "port": 70000,
                "cert_file": 3,
                "key_file": "",
                "client_ca_file": 4,
                "require_client_cert": "x",
                "zzz": 1,
            },
            "typo": 1,
        },
        "http": {
            "enabled": "x",
            "host": 5,
            "port": 99999,
            "max_connections": 0,
            "request_timeout": "2h",
            "typo": 1,
        },
        "policy": {
            "failure_threshold": 0,
            "success_threshold": "x",
            "fatal_recovery_threshold": -1,
            "overrides": {"": {}, "gpu/": {"failure_threshold": 0, "x": 1}, 5: {}},
            "typo": 1,
        },
        "liveness": {"heartbeat_interval": "2m", "max_loop_lag": "0s", "typo": 1},
        "log": {"level": "loud", "format": "xml", "typo": 1},
        "jitter": 0.9,
        "shutdown_grace": "1h",
        "simulate": "x",
        "scenario": 3,
        "state_dir": 4,
        "engines_dir": 5,
        "gpu": {
            "enabled": "x",
            "poll_interval": "2h",
            "nvml_call_timeout": "0s",
            "event_wait_timeout": "11s",
            "events": 3,
            "expected_uuids": 5,
            "expected_count": -1,
            "multi_gpu_model": "x",
            "multi_node_nvlink": "y",
            "xid_overrides": {"79": "bogus", "x": "info", -1: "info"},
            "xid_report_window": "x",
            "ecc_xid_window": -1,
            "ecc_corrected_warn": -1,
            "ecc_corrected_window": "0.5s",
            "thermal_slowdown_c": "hot",
            "thermal_shutdown_c": [],
            "thermal_sustain": "40d",
            "pcie_replay_warn": "x",
            "pcie_replay_window": 0,
            "inforom_interval": 0,
            "busy_utilization_pct": 101,
            "required_memory_mib": -5,
            "state_file": "a/b",
            "typo": 1,
        },
        "canary": {
            "enabled": "x",
            "runner": "gpu",
            "interval": "0.5s",
            "allow_fast_interval": "no",
            "timeout": 0,
            "first_timeout": 0,
            "load_timeout": "x",
            "max_skip": -1,
            "latency_budget_ms": -1,
            "latency_gates_readiness": 4,
            "recovery_passes": 0,
            "restart_backoff_initial": "10s",
            "restart_backoff_max": "5s",
            "manifest": 5,
            "tensorrt_manifest": [],
            "production_engine": {"memory_budget_mib": -1, "x": 1},
            "allow_engine_host_code": "x",
            "devices": [-1, 2],
            "warmup_runs": 101,
            "mps": "x",
            "mps_min_interval": "0.5s",
            "rss_growth_warn_mib": -1,
            "worker_max_rss_mib": 0,
            "tensor_core": {"blocks_per_sm": 0, "allow_fault_injection": True, "simulated_sms": 2000, "x": 1},
            "determinism_check": "x",
            "typo": 1,
        },
        "engines": {
            "list": [
                {"name": "", "manifest": "m", "file": "f", "format": "exe", "check_memory": "x", "zz": 1},
                {"name": "a/b"},
                {"name": "ok", "file": "f"},
                {"name": "ok", "manifest": "m"},
                5,
            ],
            "hash_timeout": 0,
            "hash_min_interval": -1,
            "rehash_interval": "x",
            "hash_max_mb_per_s": -1,
            "watch": "fs",
            "poll_interval": 0,
            "check_interval": "0s",
            "stable_window": "x",
            "gate_readiness_after_verified": "x",
            "tensorrt_version": 10,
            "compute_capability": "nine",
            "last_good_dir": 5,
            "typo": 1,
        },
        "trends": {
            "enabled": "x",
            "interval": "0s",
            "gates_readiness": "x",
            "persist_interval": "0.5s",
            "state_file": "..",
            "latency": {"enabled": "x", "warmup": 1, "k": 0, "h": 0, "clip": 0, "min_rel_shift": 11, "x": 1},
            "ecc_corrected": {
                "window": "1s",
                "min_span": 0,
                "rate_per_hour": 0,
                "fatal_threshold": -1,
                "forecast_horizon": "1s",
                "x": 1,
            },
            "remapped_rows": 5,
            "pcie_replays": {"fatal_threshold": "x"},
            "typo": 1,
        },
        "events": {
            "enabled": "x",
            "namespace": 1,
            "pod_name": 2,
            "pod_uid": 3,
            "node_name": 4,
            "api_server": "ftp://x",
            "token_file": 5,
            "ca_file": 6,
            "namespace_file": 7,
            "component": 8,
            "aggregate_window": -1,
            "burst": 0,
            "refill_interval": 0,
            "timeout": 0.01,
            "queue_size": 0,
            "typo": 1,
        },
        "typo": 1,
    }
)
# 2: mappings that are not mappings
BAD_DOCUMENTS.append(
    {
        "grpc": 5,
        "http": [],
        "policy": "x",
        "liveness": 3,
        "log": 1,
        "gpu": 2,
        "canary": 3,
        "engines": 4,
        "trends": 5,
        "events": 6,
    }
)
BAD_DOCUMENTS.append(
    {
        "grpc": {"tls": 5},
        "engines": {"list": 5},
        "canary": {"production_engine": 5, "tensor_core": 5},
        "trends": {"latency": 5},
        "gpu": {"xid_overrides": 5},
    }
)
BAD_DOCUMENTS.append(
    {
        "grpc": {"port": 9000, "tls": {"port": 9000, "require_client_cert": True}},
        "http": {"port": 9000},
        "scenario": "x",
    }
)
BAD_DOCUMENTS.append(
    {"http": {"port": 9300}, "grpc": {"port": 9301, "tls": {"port": 9300, "cert_file": "c", "key_file": "k"}}}
)
BAD_DOCUMENTS.append(
    {
        "grpc": {"port": None, "host": None, "tls": None},
        "gpu": {"enabled": None, "poll_interval": None, "expected_count": None},
        "canary": {"interval": None, "latency_budget_ms": None, "production_engine": None},
        "engines": {"list": None, "watch": None},
    }
)
BAD_DOCUMENTS.append(
    {
        "workload": {
            "enabled": "x",
            "kind": "grpc",
            "url": 5,
            "target": 6,
            "model": 7,
            "model_version": 8,
            "interval": 0,
            "timeout": -1,
            "failure_threshold": 0,
            "gate_readiness": "x",
            "check_ready": "y",
            "manifest": "/nonexistent/m.yaml",
            "request": {
                "inputs": [
                    {"name": "", "datatype": "FP99", "data": [1], "file": "x.npy"},
                    {"name": "a", "data": [[1, 2], [3]], "shape": "x"},
                    {"name": "b", "datatype": "INT8", "data": [1, 2, 3], "shape": [2, 2]},
                ],
                "zz": 1,
            },
            "expect": {"outputs": 5, "atol": -1, "rtol": "x", "text": 5, "zz": 1},
            "prompt": 1,
            "max_tokens": 0,
            "ready_path": 2,
            "expected_status": "a,b",
            "headers": {"X": 1, "Y": "ok"},
            "typo": 1,
        }
    }
)
BAD_DOCUMENTS.append({"workload": {"enabled": True, "kind": "kserve-grpc", "check_ready": False}})
BAD_DOCUMENTS.append({"workload": {"enabled": True, "kind": "openai"}})
BAD_DOCUMENTS.append(
    {
        "workload": {
            "enabled": True,
            "kind": "kserve-http",
            "url": "http://x/",
            "model": "m",
            "request": {"inputs": [{"name": "x", "data": [1.0]}]},
            "expect": {"outputs": [{"name": "y", "data": [2.0]}], "atol": 0.5},
        }
    }
)
BAD_DOCUMENTS.append(
    {
        "canary": {"interval": "5ms", "allow_fast_interval": True},
        "engines": {"list": [{"name": " x", "manifest": ""}]},
        "canary2": {},
    }
)


@pytest.mark.parametrize("index", range(len(BAD_DOCUMENTS)))
def test_every_problem_is_reported_with_its_recorded_message(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRT_HEALTH_SDC_FAULT_INJECTION", raising=False)
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))[index]
    try:
        parse_config(BAD_DOCUMENTS[index])
    except ConfigError as exc:
        assert sorted(exc.all_problems) == expected
    else:
        assert expected == []
