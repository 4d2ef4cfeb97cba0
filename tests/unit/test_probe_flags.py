"""Flag parsing, validation and Go-style formatting of the `probe` subcommand (no network)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import pytest

from sidecar import probe
from sidecar.core.errors import PROBE_INVALID_ARGUMENTS, PROBE_OK
from sidecar.probe import ProbeArgError, ProbeOptions, format_go_duration, parse_args
from sidecar.probe.tls import name_for_no_verify, socket_address
from sidecar.probe.wire import grpc_target
from sidecar.testing.probe import leaf_der


def _ok(argv: list[str]) -> ProbeOptions:
    result = parse_args(argv)
    assert isinstance(result, ProbeOptions), result
    return result


def _err(argv: list[str]) -> ProbeArgError:
    result = parse_args(argv)
    assert isinstance(result, ProbeArgError), result
    return result


# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    "argv",
    [
        ["-addr", "host:1", "-service", "svc"],
        ["-addr=host:1", "-service=svc"],
        ["--addr", "host:1", "--service", "svc"],
        ["--addr=host:1", "--service=svc"],
        ["-addr", "host:1", "--service=svc"],
    ],
)
def test_string_flags_accept_every_go_syntax(argv: list[str]) -> None:
    """`-f v`, `-f=v`, `--f v` and `--f=v` all set the flag."""
    opts = _ok(argv)
    assert (opts.addr, opts.service) == ("host:1", "svc")


def test_defaults_match_grpc_health_probe() -> None:
    """Only -addr given: the other flags take grpc_health_probe's defaults."""
    opts = _ok(["-addr", ":9180"])
    assert opts == ProbeOptions(addr=":9180")
    assert opts.user_agent == "grpc_health_probe"
    assert (opts.connect_timeout, opts.rpc_timeout) == (1.0, 1.0)
    assert not (opts.tls or opts.gzip or opts.verbose or opts.rpc_headers)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-tls"], True),
        (["--tls"], True),
        (["-tls=true"], True),
        (["-tls=1"], True),
        (["-tls=T"], True),
        (["-tls=TRUE"], True),
        (["-tls=false"], False),
        (["-tls=0"], False),
        (["-tls=F"], False),
        (["-tls", "-tls=false"], False),
    ],
)
def test_bool_flags_parse_go_booleans(args: list[str], expected: bool) -> None:
    """Booleans take no separate argument and accept strconv.ParseBool spellings after `=`."""
    assert _ok(["-addr", "h:1", *args]).tls is expected


def test_bool_flag_does_not_consume_the_next_argument() -> None:
    """`-gzip false` sets gzip and stops parsing at the positional `false`, like Go."""
    opts = _ok(["-addr", "h:1", "-gzip", "false", "-service", "ignored"])
    assert opts.gzip is True
    assert opts.service == ""


def test_bad_boolean_value_is_a_parse_error() -> None:
    """`-tls=yes` is not a Go boolean: the error names the flag and the usage follows."""
    err = _err(["-addr", "h:1", "-tls=yes"])
    assert err.message == 'invalid boolean value "yes" for -tls: parse error'
    assert err.show_usage and err.exit_code == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("250us", 0.00025),
        ("3s", 3.0),
    ],
)
def test_durations_use_go_syntax(text: str, seconds: float) -> None:
    """-connect-timeout and -rpc-timeout read Go durations."""
    opts = _ok(["-addr", "h:1", "-connect-timeout", text, f"-rpc-timeout={text}"])
    assert opts.connect_timeout == pytest.approx(seconds)
    assert opts.rpc_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "abc", "1x", "", "s", "1s2", "--1s"])
def test_bad_durations_are_parse_errors_naming_the_flag(text: str) -> None:
    """A duration Go's time.ParseDuration refuses is a flag error naming the flag."""
    err = _err(["-addr", "h:1", f"-rpc-timeout={text}"])
    assert err.message == f'invalid value "{text}" for flag -rpc-timeout: parse error'
    assert err.show_usage


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("-connect-timeout", "0", "0s"),
        ("-connect-timeout", "-1s", "-1s"),
        ("-rpc-timeout", "0s", "0s"),
        ("-rpc-timeout", "-1m30s", "-1m30s"),
    ],
)
def test_durations_must_be_positive(flag: str, value: str, shown: str) -> None:
    """Zero or negative timeouts fail validation with Go's wording (value shown Go-style)."""
    err = _err(["-addr", "h:1", flag, value])
    assert err.message == f"error: {flag} must be greater than zero (specified: {shown})"
    assert not err.show_usage


def test_value_flag_takes_next_argument_even_if_it_starts_with_dash() -> None:
    """Like Go, `-service -tls` makes `-tls` the service name."""
    opts = _ok(["-addr", "h:1", "-service", "-tls"])
    assert opts.service == "-tls"
    assert opts.tls is False


def test_parsing_stops_at_double_dash_and_positionals() -> None:
    """`--` and the first non-flag argument end the flags; the rest is ignored."""
    assert _ok(["-addr", "h:1", "--", "-service", "x"]).service == ""
    assert _ok(["-addr", "h:1", "extra", "-service", "x"]).service == ""


def test_repeated_rpc_headers_split_on_first_colon() -> None:
    """-rpc-header repeats; split on the first colon; only leading space of the value trimmed."""
    opts = _ok(
        [
            "-addr",
            "h:1",
            "-rpc-header",
            "Authorization: Bearer a:b ",
            "-rpc-header=x-id:\t 42",
            "--rpc-header",
            "x-id:43",
            "-rpc-header",
            "empty:",
        ]
    )
    assert opts.rpc_headers == (
        ("Authorization", "Bearer a:b "),
        ("x-id", "42"),
        ("x-id", "43"),
        ("empty", ""),
    )


def test_rpc_header_without_colon_is_an_error() -> None:
    """A header with no colon is rejected with a message naming -rpc-header."""
    err = _err(["-addr", "h:1", "-rpc-header", "novalue"])
    assert err.message.startswith('invalid value "novalue" for flag -rpc-header:')
    assert "expected 'key: value'" in err.message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-addr"], "flag needs an argument: -addr"),
        (["-addr", "h:1", "-nope"], "flag provided but not defined: -nope"),
        (["-addr", "h:1", "-Addr=x"], "flag provided but not defined: -Addr"),
        (["---addr=h:1"], "bad flag syntax: ---addr=h:1"),
        (["-=x"], "bad flag syntax: -=x"),
    ],
)
def test_flag_syntax_errors(argv: list[str], message: str) -> None:
    """Go flag parse errors: same messages, usage shown, exit 1."""
    err = _err(argv)
    assert err.message == message
    assert err.show_usage and err.exit_code == PROBE_INVALID_ARGUMENTS


@pytest.mark.parametrize("flag", ["-h", "-help", "--help", "--h"])
def test_help_is_usage_and_exit_1(flag: str) -> None:
    """-h/-help print only the usage and fail with exit 1 (flag.ContinueOnError)."""
    err = _err([flag])
    assert err.message == ""
    assert err.show_usage and err.exit_code == 1


def test_missing_addr() -> None:
    """-addr is required."""
    assert _err([]).message == "error: -addr not specified"
    assert _err(["-service", "x"]).message == "error: -addr not specified"


# --------------------------------------------------------------------------- validation rules


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-tls-no-verify"], "specified -tls-no-verify without specifying -tls"),
        (["-tls-ca-cert", "ca.pem"], "specified -tls-ca-cert without specifying -tls"),
        (
            ["-tls-client-cert", "c.pem", "-tls-client-key", "k.pem"],
            "specified -tls-client-cert without specifying -tls",
        ),
        (["-tls-server-name", "x"], "specified -tls-server-name without specifying -tls"),
        (
            ["-tls", "-tls-client-cert", "c.pem"],
            "specified -tls-client-cert without specifying -tls-client-key",
        ),
        (
            ["-tls", "-tls-client-key", "k.pem"],
            "specified -tls-client-key without specifying -tls-client-cert",
        ),
        (
            # Go's gap: a key alone without -tls is refused for the missing cert, not for -tls.
            ["-tls-client-key", "k.pem"],
            "specified -tls-client-key without specifying -tls-client-cert",
        ),
        (
            ["-tls", "-tls-no-verify", "-tls-ca-cert", "ca.pem"],
            "cannot specify -tls-ca-cert with -tls-no-verify (CA cert would not be used)",
        ),
        (
            ["-tls", "-tls-no-verify", "-tls-server-name", "x"],
            "cannot specify -tls-server-name with -tls-no-verify (server name would not be used)",
        ),
        (["-alts", "-spiffe"], "-alts and -spiffe are mutually incompatible"),
        (["-tls", "-alts"], "cannot specify -tls with -alts"),
        (["-tls", "-spiffe"], "-tls and -spiffe are mutually incompatible"),
    ],
)
def test_validation_rules(extra: list[str], message: str) -> None:
    """Each rule of grpc_health_probe's validation gives its message (naming the flags)."""
    err = _err(["-addr", "h:1", *extra])
    assert err.message == f"error: {message}"
    assert err.exit_code == 1 and not err.show_usage


@pytest.mark.parametrize(
    "extra",
    [
        ["-tls"],
        ["-tls", "-tls-no-verify"],
        ["-tls", "-tls-ca-cert", "ca.pem", "-tls-server-name", "x"],
        ["-tls", "-tls-client-cert", "c.pem", "-tls-client-key", "k.pem"],
        ["-tls", "-tls-no-verify", "-tls-client-cert", "c.pem", "-tls-client-key", "k.pem"],
        ["-gzip", "-v", "-user-agent", "kube-probe/1.31"],
    ],
)
def test_valid_combinations_pass(extra: list[str]) -> None:
    """Combinations the Go tool accepts are accepted."""
    _ok(["-addr", "h:1", *extra])


def test_version_skips_validation() -> None:
    """-version needs no -addr and is not validated."""
    assert _ok(["-version"]).version is True


# --------------------------------------------------------------------------- main()


def test_main_help_prints_usage_and_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    """`probe -h` lists every flag on stderr and returns 1."""
    assert probe.main(["-h"]) == 1
    err = capsys.readouterr().err
    for name in (
        "addr",
        "service",
        "user-agent",
        "connect-timeout",
        "rpc-timeout",
        "rpc-header",
        "tls",
        "tls-no-verify",
        "tls-ca-cert",
        "tls-client-cert",
        "tls-client-key",
        "tls-server-name",
        "alts",
        "spiffe",
        "gzip",
        "v",
        "version",
    ):
        assert f"\n  -{name}" in err, name
    assert "  -connect-timeout duration\n" in err
    assert '(default "grpc_health_probe")' in err


def test_main_version_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """`probe -version` prints the version on stdout and returns 0."""
    from sidecar import __version__

    assert probe.main(["-version"]) == PROBE_OK
    out = capsys.readouterr()
    assert __version__ in out.out
    assert out.err == ""


def test_main_validation_error_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """A validation error prints one `error: ...` line on stderr (no usage) and returns 1."""
    assert probe.main(["-addr", "h:1", "-tls-no-verify"]) == 1
    out = capsys.readouterr()
    assert out.err == "error: specified -tls-no-verify without specifying -tls\n"
    assert out.out == ""


@pytest.mark.parametrize("flag", ["-alts", "-spiffe"])
def test_alts_and_spiffe_are_refused_clearly(flag: str) -> None:
    """-alts / -spiffe parse, then fail with exit 1 and a message naming the flag."""
    opts = _ok(["-addr", "h:1", flag])
    err = io.StringIO()
    assert probe.run_probe(opts, err) == PROBE_INVALID_ARGUMENTS
    assert f"error: {flag} is not supported" in err.getvalue()


def test_version_does_not_import_grpc() -> None:
    """`-version` and argument errors load no grpc, prometheus, numpy or yaml (fast start)."""
    code = (
        "import sys; from sidecar import probe; probe.main(['-version']); probe.main([]); "
        "bad = [m for m in ('grpc', 'prometheus_client', 'numpy', 'yaml', 'google.protobuf') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_probe_module_imports_no_heavy_sidecar_modules() -> None:
    """The probe loads only config.section/errors from the sidecar package (and its own parts)."""
    code = (
        "import json, sys; from sidecar import probe; probe.main(['-version']); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sidecar'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    imported = {m for m in loaded if m != "sidecar.probe" and not m.startswith("sidecar.probe.")}
    # config.section itself needs runtime.safeload (stdlib only); the packages' __init__ load too
    allowed = {"sidecar", "sidecar.config", "sidecar.config.section", "sidecar.core", "sidecar.core.errors"}
    assert imported <= allowed | {"sidecar.runtime", "sidecar.runtime.safeload"}, imported


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (3661.5, "1h1m1.5s"),
        (0.0000015, "1.5µs"),
        (0.000000042, "42ns"),
        (0.0132222, "13.2222ms"),
        (-1, "-1s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    """Durations print like Go's time.Duration.String (used in every timeout message)."""
    assert format_go_duration(seconds) == text


@pytest.mark.parametrize(
    ("addr", "target"),
    [
        (":9180", "localhost:9180"),
        ("127.0.0.1:9180", "127.0.0.1:9180"),
        ("unix:///run/s.sock", "unix:///run/s.sock"),
        ("unix:s.sock", "unix:s.sock"),
        ("dns:///svc:1", "dns:///svc:1"),
    ],
)
def test_grpc_target(addr: str, target: str) -> None:
    """`:port` means the local host (as grpc-go dials it); other forms pass through."""
    assert grpc_target(addr) == target


@pytest.mark.parametrize(
    ("addr", "family", "address", "sni"),
    [
        (":9180", socket.AF_UNSPEC, ("localhost", 9180), "localhost"),
        ("10.0.0.1:9", socket.AF_UNSPEC, ("10.0.0.1", 9), None),
        ("[::1]:9", socket.AF_UNSPEC, ("::1", 9), None),
        ("svc.ns:443", socket.AF_UNSPEC, ("svc.ns", 443), "svc.ns"),
        ("dns:///svc:7", socket.AF_UNSPEC, ("svc", 7), "svc"),
        ("unix:///run/s.sock", socket.AF_UNIX, "/run/s.sock", None),
        ("unix:rel.sock", socket.AF_UNIX, "rel.sock", None),
    ],
)
def test_socket_address_for_certificate_fetch(
    addr: str, family: int, address: object, sni: str | None
) -> None:
    """-tls-no-verify dials the same place the channel does."""
    assert socket_address(addr) == (family, address, sni)


def test_certificate_names_reads_sans_and_cn() -> None:
    """The DER reader finds DNS SANs, IP SANs and the subject CN."""
    der = leaf_der(["a.test", "b.test"], ["10.1.2.3", "::1"], "the-cn")
    assert probe.certificate_names(der) == (["a.test", "b.test"], ["10.1.2.3", "::1"], "the-cn")


@pytest.mark.parametrize(
    ("dns", "ips", "cn", "name"),
    [
        (["a.test"], ["10.0.0.1"], "cn", "a.test"),
        (["*.svc.test"], [], "cn", "probe.svc.test"),
        ([], ["10.0.0.1"], "cn", "10.0.0.1"),
        ([], [], "only-cn", "only-cn"),
    ],
)
def test_no_verify_name_choice(dns: list[str], ips: list[str], cn: str, name: str) -> None:
    """-tls-no-verify overrides the checked name with one the certificate really carries."""
    assert name_for_no_verify(leaf_der(dns, ips, cn)) == name


def test_certificate_names_rejects_garbage() -> None:
    """A malformed certificate is a ValueError, not a crash."""
    with pytest.raises(ValueError, match="cannot parse"):
        probe.certificate_names(b"\x30\x03\x02\x01")


# --------------------------------------------------------------------------- wire format


@pytest.mark.parametrize("service", ["", "readiness", "gpu/GPU-0f1e", "é" * 200])
def test_check_request_encoding_matches_protobuf(service: str) -> None:
    """The hand-encoded HealthCheckRequest is byte-identical to the generated message's."""
    from grpc_health.v1 import health_pb2

    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert probe.encode_check_request(service) == expected


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_check_response_decoding_matches_protobuf(status: int) -> None:
    """Every ServingStatus serialised by protobuf decodes to the same number and name."""
    from grpc_health.v1 import health_pb2

    raw = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert probe.decode_check_response(raw) == status
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert probe.SERVING_STATUS_NAMES[status] == name


def test_check_response_skips_unknown_fields() -> None:
    """Fields a newer server might add (any wire type) are skipped; a later status wins."""
    raw = (
        b"\x12\x03abc"  # field 2, length-delimited
        + b"\x08\x02"  # status NOT_SERVING
        + b"\x19"
        + bytes(8)  # field 3, fixed64
        + b"\x25"
        + bytes(4)  # field 4, fixed32
        + b"\x28\x96\x01"  # field 5, varint
        + b"\x08\x01"  # status SERVING (last one wins, as protobuf does)
    )
    assert probe.decode_check_response(raw) == 1


@pytest.mark.parametrize("raw", [b"\x08", b"\x12\x05ab", b"\x0b", b"\x08\xff"])
def test_check_response_malformed_is_value_error(raw: bytes) -> None:
    """Truncated or unsupported input raises ValueError (grpcio reports it as a failed RPC)."""
    with pytest.raises(ValueError):
        probe.decode_check_response(raw)
