"""Workload probe: a tiny request with a known answer to the main inference server's own API.

Config (``workload:``; defaults in brackets): ``enabled`` [false]; ``kind`` kserve-http |
kserve-grpc | openai | http-ready [http-ready]; ``url`` (HTTP kinds) / ``target`` host:port
(gRPC); ``model``; ``model_version`` [""]; ``interval`` [5s]; ``timeout`` [2s];
``failure_threshold`` [3] (workload-liveness); ``gate_readiness`` [true]; ``check_ready`` [true]
(model ready endpoint first); ``manifest`` (take golden inputs/outputs and tolerances from an
engine manifest); ``request.inputs`` / ``expect.outputs`` (``{name, datatype, shape, data|file}``)
with ``expect.atol`` / ``expect.rtol``; OpenAI: ``prompt`` ["ping"], ``max_tokens`` [1],
``expect.text`` (exact; default: any non-empty choice), ``ready_path`` (e.g. /health);
http-ready: ``ready_path``, ``expected_status`` [[200]]; ``headers`` (sent with every request,
gRPC metadata for kserve-grpc).

The KServe v2 gRPC messages are generated here from ``kserve_v2.proto`` (a subset of the Open
Inference Protocol, same field numbers) with ``python -m sidecar.workload.gen``; no
``tritonclient`` is needed.
"""
