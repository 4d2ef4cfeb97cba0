"""`probe` as a real subprocess against a real grpc.health.v1 server on an ephemeral port.

Asserts grpc_health_probe's exit codes and stderr messages (reference/grpc-health-anchors.md
§3.2-3.5) for plaintext, Unix sockets, TLS, mTLS, gzip, metadata, timeouts and signals.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import probe
from sidecar.testing import closed_port, wait_until
from sidecar.testing.probe import (
    NOT_SERVING,
    SERVING,
    HealthServer,
    TlsFiles,
    make_tls_files,
    probe_command,
    server_credentials,
    start_health_server,
)

# Generous only as a hang guard; every probe below finishes in well under a second or two.
RUN_TIMEOUT_S = 20


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the probe; return (exit code, stderr). stdout must stay empty (all output is stderr)."""
    proc = subprocess.run(
        probe_command(*args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=cwd,
        env=env,
    )
    assert proc.stdout == ""
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def health() -> Iterator[HealthServer]:
    server = start_health_server({"": SERVING, "up": SERVING, "down": NOT_SERVING})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="probe-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_files(short_dir: Path) -> TlsFiles:
    return make_tls_files(short_dir)


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles) -> Iterator[HealthServer]:
    server = start_health_server(
        {}, server_credentials=server_credentials(tls_files.server_cert, tls_files.server_key)
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tls_files: TlsFiles) -> Iterator[HealthServer]:
    creds = server_credentials(tls_files.server_cert, tls_files.server_key, client_ca=tls_files.ca)
    server = start_health_server({}, server_credentials=creds)
    yield server
    server.stop()


# --------------------------------------------------------------------------- exit codes


def test_serving_exits_0(health: HealthServer) -> None:
    """SERVING → exit 0 and `status: SERVING` on stderr."""
    assert run("-addr", health.target) == (0, "status: SERVING\n")


def test_named_serving_service(health: HealthServer) -> None:
    """-service selects the service sent in the request."""
    assert run("-addr", health.target, "-service", "up") == (0, "status: SERVING\n")


def test_not_serving_exits_4(health: HealthServer) -> None:
    """NOT_SERVING → exit 4 with grpc_health_probe's message."""
    code, err = run("-addr", health.target, "-service", "down")
    assert (code, err) == (4, 'service unhealthy (responded with "NOT_SERVING")\n')


def test_unknown_service_exits_3(health: HealthServer) -> None:
    """An unknown service (NOT_FOUND) is an RPC failure, exit 3, Go-formatted status."""
    code, err = run("-addr", health.target, "-service", "no-such-service")
    assert code == 3
    assert err.startswith("error: health rpc failed: rpc error: code = NotFound desc = ")


def test_port_only_address_means_localhost(health: HealthServer) -> None:
    """`-addr=:PORT` dials the local host."""
    assert run(f"-addr=:{health.port}") == (0, "status: SERVING\n")


def test_nothing_listening_exits_2_within_connect_timeout() -> None:
    """No listener → exit 2 with the timeout message, after about -connect-timeout."""
    with closed_port() as port:
        addr = f"127.0.0.1:{port}"
        start = time.monotonic()
        code, err = run("-addr", addr, "-connect-timeout", "200ms")
        elapsed = time.monotonic() - start
    assert (code, err) == (2, f'timeout: failed to connect service "{addr}" within 200ms\n')
    assert elapsed < 5


def test_server_without_health_service_exits_3() -> None:
    """A gRPC server without grpc.health.v1 → exit 3, "does not implement" message."""
    server = start_health_server(with_health=False)
    try:
        code, err = run("-addr", server.target)
    finally:
        server.stop()
    assert code == 3
    assert err.startswith(
        "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): "
    )


def test_slow_check_hits_rpc_timeout_exits_3() -> None:
    """A Check slower than -rpc-timeout → exit 3 with the timeout message."""
    server = start_health_server(slow_check_s=10)
    try:
        start = time.monotonic()
        code, err = run("-addr", server.target, "-rpc-timeout", "300ms")
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    assert (code, err) == (3, "timeout: health rpc did not complete within 300ms\n")
    assert elapsed < 5


def test_verbose_prints_options_and_timings(health: HealthServer) -> None:
    """-v logs the parsed options, the connection and both phase timings, like the Go tool."""
    code, err = run("-addr", health.target, "-v", "-rpc-header", "X-A: 1", "-connect-timeout=2s")
    lines = err.splitlines()
    assert code == 0
    assert lines[0] == "parsed options:"
    assert f"> addr={health.target} conn_timeout=2s rpc_timeout=1s" in lines
    assert "> headers: map[x-a:[1]]" in lines
    assert "> tls=false" in lines
    assert "establishing connection" in lines
    assert any(line.startswith("connection established (took ") for line in lines)
    assert any(line.startswith("time elapsed: connect=") and " rpc=" in line for line in lines)
    assert lines[-1] == "status: SERVING"


def test_real_probe_loads_no_heavy_modules(health: HealthServer) -> None:
    """A full probe run loads grpc only: no protobuf, prometheus, numpy or yaml (fast start)."""
    code = (
        "import sys; from sidecar import probe; "
        f"rc = probe.main(['-addr', '{health.target}']); "
        "heavy = ('google.protobuf', 'prometheus_client', 'numpy', 'yaml', 'sidecar.app'); "
        "print(rc, [m for m in heavy if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr


# --------------------------------------------------------------------------- request contents


def test_rpc_headers_arrive_lowercased(health: HealthServer) -> None:
    """Every -rpc-header reaches the server, keys lowercased, values' leading space trimmed."""
    code, _ = run(
        "-addr",
        health.target,
        "-rpc-header",
        "X-Tenant:  blue",
        "-rpc-header=authorization: Bearer t:k",
        "-rpc-header",
        "x-tenant: green",
    )
    assert code == 0
    assert health.recorder.values("x-tenant") == ["blue", "green"]
    assert health.recorder.values("authorization") == ["Bearer t:k"]


def test_user_agent_arrives(health: HealthServer) -> None:
    """-user-agent leads the user-agent header; the default is grpc_health_probe."""
    assert run("-addr", health.target, "-user-agent", "kube-probe/1.31")[0] == 0
    assert health.recorder.values("user-agent")[0].startswith("kube-probe/1.31 ")
    assert run("-addr", health.target)[0] == 0
    assert health.recorder.values("user-agent")[0].startswith("grpc_health_probe ")


def test_gzip_request_is_accepted(health: HealthServer) -> None:
    """-gzip against a normal grpcio server → SERVING."""
    assert run("-addr", health.target, "-gzip") == (0, "status: SERVING\n")


def test_gzip_really_compresses_the_request() -> None:
    """A server with gzip disabled refuses -gzip requests only: proof the request was gzipped."""
    server = start_health_server({}, options=[("grpc.compression_enabled_algorithms_bitset", 1)])
    try:
        assert run("-addr", server.target)[0] == 0
        code, err = run("-addr", server.target, "-gzip")
    finally:
        server.stop()
    assert code == 3
    assert "gzip" in err


def test_http_proxy_environment_is_ignored(health: HealthServer) -> None:
    """A dead https_proxy/http_proxy in the environment does not break `-addr=:PORT`."""
    with closed_port() as port:
        dead = f"http://127.0.0.1:{port}"
        env = dict(os.environ, http_proxy=dead, https_proxy=dead, grpc_proxy=dead, no_proxy="")
        env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead)
        code, err = run(f"-addr=:{health.port}", "-connect-timeout", "2s", env=env)
    assert (code, err) == (0, "status: SERVING\n")


# --------------------------------------------------------------------------- Unix sockets


def test_unix_socket_addresses(short_dir: Path) -> None:
    """`unix:///abs/path` and `unix:relative` both reach a server on a Unix socket."""
    sock = short_dir / "health.sock"
    server = start_health_server({"": SERVING}, unix_path=sock)
    try:
        assert run("-addr", f"unix://{sock}") == (0, "status: SERVING\n")
        assert run("-addr", "unix:health.sock", cwd=short_dir) == (0, "status: SERVING\n")
    finally:
        server.stop()


# --------------------------------------------------------------------------- TLS


def test_tls_with_ca_and_server_name(tls_server: HealthServer, tls_files: TlsFiles) -> None:
    """-tls -tls-ca-cert -tls-server-name verifies the server certificate and succeeds."""
    code, err = run(
        "-addr",
        tls_server.target,
        "-tls",
        f"-tls-ca-cert={tls_files.ca}",
        "-tls-server-name",
        "sidecar.test",
    )
    assert (code, err) == (0, "status: SERVING\n")


def test_tls_name_mismatch_exits_2(tls_server: HealthServer, tls_files: TlsFiles) -> None:
    """Without -tls-server-name the IP does not match the certificate: connect fails, exit 2."""
    code, err = run(
        "-addr", tls_server.target, "-tls", f"-tls-ca-cert={tls_files.ca}", "-connect-timeout=300ms"
    )
    assert code == 2
    assert err == f'timeout: failed to connect service "{tls_server.target}" within 300ms\n'


def test_tls_wrong_ca_exits_2(tls_server: HealthServer, tls_files: TlsFiles) -> None:
    """A CA that did not sign the server certificate → exit 2 (timeout message, as Go)."""
    code, err = run(
        "-addr",
        tls_server.target,
        "-tls",
        f"-tls-ca-cert={tls_files.other_ca}",
        "-tls-server-name=sidecar.test",
        "-connect-timeout=300ms",
    )
    assert (code, err) == (
        2,
        f'timeout: failed to connect service "{tls_server.target}" within 300ms\n',
    )


def test_plaintext_probe_against_tls_port_exits_2(tls_server: HealthServer) -> None:
    """Forgetting -tls against a TLS port → exit 2."""
    assert run("-addr", tls_server.target, "-connect-timeout=300ms")[0] == 2


def test_mtls_with_client_certificate(mtls_server: HealthServer, tls_files: TlsFiles) -> None:
    """A server requiring client certs accepts -tls-client-cert/-tls-client-key."""
    code, err = run(
        "-addr",
        mtls_server.target,
        "-tls",
        f"-tls-ca-cert={tls_files.ca}",
        "-tls-server-name=sidecar.test",
        f"-tls-client-cert={tls_files.client_cert}",
        f"-tls-client-key={tls_files.client_key}",
    )
    assert (code, err) == (0, "status: SERVING\n")


def test_mtls_without_client_certificate_exits_2(mtls_server: HealthServer, tls_files: TlsFiles) -> None:
    """No client certificate against an mTLS server → exit 2."""
    code, _ = run(
        "-addr",
        mtls_server.target,
        "-tls",
        f"-tls-ca-cert={tls_files.ca}",
        "-tls-server-name=sidecar.test",
        "-connect-timeout=300ms",
    )
    assert code == 2


def test_tls_no_verify_against_self_signed(tls_files: TlsFiles) -> None:
    """-tls-no-verify accepts a self-signed certificate that plain -tls refuses."""
    creds = server_credentials(tls_files.self_signed_cert, tls_files.self_signed_key)
    server = start_health_server({}, server_credentials=creds)
    try:
        refused = run("-addr", server.target, "-tls", "-connect-timeout=300ms")
        accepted = run("-addr", server.target, "-tls", "-tls-no-verify")
    finally:
        server.stop()
    assert refused[0] == 2
    assert accepted == (0, "status: SERVING\n")


def test_tls_no_verify_still_refuses_an_expired_certificate(tls_files: TlsFiles) -> None:
    """Documented difference from Go: grpcio checks validity dates even under -tls-no-verify."""
    creds = server_credentials(tls_files.expired_cert, tls_files.expired_key)
    server = start_health_server({}, server_credentials=creds)
    try:
        code, err = run("-addr", server.target, "-tls", "-tls-no-verify", "-connect-timeout=300ms")
    finally:
        server.stop()
    assert (code, err) == (
        2,
        f'timeout: failed to connect service "{server.target}" within 300ms\n',
    )


def test_tls_no_verify_ignores_unknown_ca_and_name(tls_server: HealthServer) -> None:
    """-tls-no-verify also accepts a CA-issued cert whose CA and name are unknown to the probe."""
    assert run("-addr", tls_server.target, "-tls", "-tls-no-verify") == (0, "status: SERVING\n")


def test_tls_no_verify_with_client_certificate(mtls_server: HealthServer, tls_files: TlsFiles) -> None:
    """-tls-no-verify still presents the client certificate (mTLS without server checks)."""
    code, err = run(
        "-addr",
        mtls_server.target,
        "-tls",
        "-tls-no-verify",
        f"-tls-client-cert={tls_files.client_cert}",
        f"-tls-client-key={tls_files.client_key}",
    )
    assert (code, err) == (0, "status: SERVING\n")


def test_tls_no_verify_nothing_listening_exits_2() -> None:
    """-tls-no-verify with no listener fails the connect phase within the timeout, exit 2."""
    with closed_port() as port:
        addr = f"127.0.0.1:{port}"
        code, err = run("-addr", addr, "-tls", "-tls-no-verify", "-connect-timeout=200ms")
    assert (code, err) == (2, f'timeout: failed to connect service "{addr}" within 200ms\n')


# --------------------------------------------------------------------------- TLS file errors


def test_missing_ca_file_exits_1(short_dir: Path) -> None:
    """An unreadable -tls-ca-cert → exit 1 with the Go tool's credential message."""
    missing = short_dir / "missing-ca.pem"
    err = io.StringIO()
    opts = probe.ProbeOptions(addr="127.0.0.1:1", tls=True, tls_ca_cert=str(missing))
    assert probe.run_probe(opts, err) == 1
    assert err.getvalue().startswith(
        "failed to initialize tls credentials. error=failed to load root CA certificates "
        f"from file ({missing})"
    )


def test_ca_file_without_certificates_exits_1(short_dir: Path) -> None:
    """A -tls-ca-cert file with no PEM certificate → exit 1, "no root CA certs parsed"."""
    empty = short_dir / "empty-ca.pem"
    empty.write_text("not a certificate\n")
    err = io.StringIO()
    opts = probe.ProbeOptions(addr="127.0.0.1:1", tls=True, tls_ca_cert=str(empty))
    assert probe.run_probe(opts, err) == 1
    assert err.getvalue() == (
        f"failed to initialize tls credentials. error=no root CA certs parsed from file {empty}\n"
    )


def test_mismatched_client_key_exits_1(tls_files: TlsFiles) -> None:
    """A client key that does not match the certificate → exit 1 (like tls.LoadX509KeyPair)."""
    code, err = run(
        "-addr",
        "127.0.0.1:1",
        "-tls",
        f"-tls-client-cert={tls_files.client_cert}",
        f"-tls-client-key={tls_files.server_key}",
    )
    assert code == 1
    assert err.startswith(
        "failed to initialize tls credentials. error=failed to load tls client cert/key pair."
    )


# --------------------------------------------------------------------------- signals


def test_sigterm_during_rpc_exits_3() -> None:
    """SIGTERM while the Check is in flight cancels it: exit 3 (grpc_health_probe >= 0.4.53)."""
    server = start_health_server(slow_check_s=10)
    proc = subprocess.Popen(
        probe_command("-addr", server.target, "-rpc-timeout=10s"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(lambda: server.recorder.calls, timeout=RUN_TIMEOUT_S, what="the Check reached the server")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 3
    assert "cancellation received (signal: terminated)" in err
    assert "error: health rpc failed: rpc error: code = Canceled" in err


def test_sigint_while_connecting_exits_2() -> None:
    """SIGINT while the connection is being set up (server never answers) → exit 2."""
    with socket.socket() as silent:  # accepts TCP but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            probe_command("-addr", addr, "-connect-timeout=10s", "-v"),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.strip() == "establishing connection":
                    break
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=5)
        finally:
            proc.kill()
    assert proc.returncode == 2
    assert "cancellation received (signal: interrupt)" in rest
    assert f'error: failed to connect service at "{addr}": context canceled' in rest
