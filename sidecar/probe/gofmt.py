"""Go-style text for the probe's messages: durations as ``time.Duration.String`` prints them,
gRPC errors and metadata as grpc-go prints them (byte for byte what grpc_health_probe writes)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_go_duration", "format_ns", "go_headers", "go_status_error"]


def format_go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``: ``1s``, ``500ms``, ``1m30s``, ``1.5µs``."""
    return format_ns(round(seconds * 1e9))


def _frac(v: int, prec: int) -> tuple[int, str]:
    q, r = divmod(v, 10**prec)
    if r == 0:
        return q, ""
    return q, "." + f"{r:0{prec}d}".rstrip("0")


def format_ns(ns: int) -> str:
    """``format_go_duration`` for a count of nanoseconds (the verbose timings)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        if u < 1_000:
            unit, prec = "ns", 0
        elif u < 1_000_000:
            unit, prec = "µs", 3
        else:
            unit, prec = "ms", 6
        q, frac = _frac(u, prec)
        return f"{sign}{q}{frac}{unit}"
    secs, frac = _frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours:
            out = f"{hours}h{out}"
    return sign + out


_GO_CODE_NAMES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}


def go_status_error(code_name: str, details: str) -> str:
    """A gRPC error as grpc-go prints it: ``rpc error: code = NotFound desc = unknown service``."""
    return f"rpc error: code = {_GO_CODE_NAMES.get(code_name, code_name)} desc = {details}"


def go_headers(headers: Sequence[tuple[str, str]]) -> str:
    """Headers as Go prints a ``metadata.MD``: ``map[key:[v1 v2] other:[v]]``, keys sorted."""
    md: dict[str, list[str]] = {}
    for k, v in headers:
        md.setdefault(k.lower(), []).append(v)
    inner = " ".join(f"{k}:[{' '.join(vs)}]" for k, vs in sorted(md.items()))
    return f"map[{inner}]"
