"""proxy/cli/remote.py: the admin-API client's addresses, keys and errors. Each error a user can
meet names the server and the fix, with the local mode's exit codes (2 for a refused request,
1 for a server that cannot be reached, trusted or understood); answers are bounded. The
exchanges run against a small TLS server on 127.0.0.1 with a certificate from a real CA."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import certs
from proxy.cli import cli
from proxy.cli.remote import (
    MAX_ANSWER,
    Remote,
    RemoteFailed,
    RemoteRefused,
    api_key,
    console_url,
    refusal,
    unreachable,
)
from proxy.errors import ConfigError

REMOTE = Remote("https://appliance.example.test:4343")


# ---------------------------------------------------------------- addresses and keys


@pytest.mark.parametrize(("given", "url"), [
    ("appliance.example.test", "https://appliance.example.test:4343"),
    ("appliance.example.test:9443", "https://appliance.example.test:9443"),
    ("https://10.0.0.5/", "https://10.0.0.5:4343"),
    ("https://[2001:db8::5]:4343", "https://[2001:db8::5]:4343"),
])
def test_a_console_address_is_https_with_the_console_port_by_default(given: str, url: str) -> None:
    assert console_url(given) == url


@pytest.mark.parametrize(("given", "said"), [
    ("http://appliance.example.test:4343", "speaks only https"),
    ("https://appliance.example.test/api", "is not a console address"),
    ("https://admin:pw@appliance.example.test", "is not a console address"),
    ("https://appliance.example.test:99999", "https://HOST:4343"),
])
def test_a_bad_console_address_is_refused_naming_it(given: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as e:
        console_url(given, "$RAMPART_CONSOLE")
    assert e.value.exit_code == 2 and "$RAMPART_CONSOLE" in e.value.message


def test_the_key_comes_from_the_file_before_the_environment(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMPART_API_KEY", raising=False)
    assert api_key(None) is None
    monkeypatch.setenv("RAMPART_API_KEY", " rpk_env \n")
    assert api_key(None) == "rpk_env"
    f = tmp_path / "key"
    f.write_text("rpk_file\n")
    f.chmod(0o600)
    assert api_key(f) == "rpk_file"


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("rpk_file\n")
    f.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        api_key(f)


@pytest.mark.parametrize("text", ["", "two words\n", "x" * 300])
def test_a_file_without_a_key_is_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "key"
    f.write_text(text)
    f.chmod(0o600)
    with pytest.raises(ConfigError, match=r"--api-key-file .* does not hold an API key"):
        api_key(f)


def test_a_key_with_control_characters_in_the_environment_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMPART_API_KEY", "rpk_a\tb")
    with pytest.raises(ConfigError, match="RAMPART_API_KEY does not hold"):
        api_key(None)


# ---------------------------------------------------------------- refusals and failures


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_401_without_a_key_says_to_set_one() -> None:
    e = refusal(REMOTE, 401, _error("unauthorized", "log in"), "/api/lists")
    assert isinstance(e, RemoteRefused) and e.exit_code == 2 and e.status == 401
    assert "https://appliance.example.test:4343 refused /api/lists (401)" in e.message
    assert "no API key given: set RAMPART_API_KEY" in e.message and "rampart admin key create" in e.message


def test_401_with_a_key_says_it_was_not_accepted() -> None:
    e = refusal(Remote(REMOTE.url, key="rpk_x"), 401, _error("unauthorized", "log in"), "/api/lists")
    assert "the API key was not accepted" in e.message and e.exit_code == 2


def test_403_for_a_role_names_the_role_and_the_one_needed() -> None:
    e = refusal(REMOTE, 403, _error("forbidden", "role 'viewer' may not lists.write"), "/api/lists")
    assert e.exit_code == 2 and "role 'viewer' may not lists.write" in e.message
    assert "use a key of role operator or admin" in e.message
    other = refusal(REMOTE, 403, _error("forbidden_client", "not a console client"), "/api/lists")
    assert "not a console client" in other.message and "operator" not in other.message


def test_404_of_an_operation_asks_whether_it_is_the_console_and_404_of_a_rule_says_why() -> None:
    e = refusal(REMOTE, 404, _error("not_found", "no API operation at /api/x"), "/api/x")
    assert "is --server the console door" in e.message
    rule = refusal(REMOTE, 404, _error("no_such_rule", "no list holds domain a.test"), "/api/lists/edit")
    assert rule.message.endswith("no list holds domain a.test") and rule.exit_code == 2


def test_other_4xx_carry_the_servers_message_and_429_when_to_try_again() -> None:
    e = refusal(REMOTE, 409, _error("no_update_source", "no update source configured"), "/api/updates/now")
    assert e.exit_code == 2 and e.message.endswith("no update source configured")
    assert isinstance(e, RemoteRefused) and e.code == "no_update_source"
    slow = refusal(REMOTE, 429, _error("too_many", "too many attempts"), "/api/lists", retry_after="30")
    assert slow.message.endswith("try again in 30 s")
    bare = refusal(REMOTE, 400, b"<html>", "/api/lists")
    assert bare.message.endswith("(400): HTTP 400")


def test_5xx_is_a_failure_exit_1() -> None:
    e = refusal(REMOTE, 502, b"", "/api/lists")
    assert isinstance(e, RemoteFailed) and e.exit_code == 1 and "failed /api/lists (HTTP 502)" in e.message


def _cert_error(code: int) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_code = code
    e.verify_message = "x"
    return e


@pytest.mark.parametrize(("error", "said"), [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused: is `rampart serve` running"),
    (TimeoutError(), "did not answer within 30 s"),
    (socket.gaierror(-2, "Name or service not known"), "the host name does not resolve"),
    (_cert_error(20), "certificate not trusted: give --server-ca with the appliance's ca.pem"),
    (_cert_error(62), "certificate is not for appliance.example.test"),
    (ssl.SSLError(1, "wrong version number"), "TLS failed"),
    (http.client.RemoteDisconnected("closed"), "broke the exchange (RemoteDisconnected)"),
    (OSError(113, "No route to host"), "cannot reach https://appliance.example.test:4343: No route"),
])
def test_no_answer_is_a_failure_naming_the_server_and_why(error: BaseException, said: str) -> None:
    e = unreachable(REMOTE, error)
    assert e.exit_code == 1 and said in e.message and REMOTE.url in e.message


def test_an_untrusted_certificate_with_a_given_ca_names_that_file() -> None:
    e = unreachable(Remote(REMOTE.url, ca=Path("/x/ca.pem")), _cert_error(20))
    assert "not trusted by --server-ca /x/ca.pem" in e.message


def test_a_ca_file_that_is_no_certificate_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no usable CA certificate"):
        Remote(REMOTE.url, ca=bad).context()


# ---------------------------------------------------------------- options


def _run(*args: str, **env: str | None) -> tuple[int, str]:
    base: dict[str, str | None] = {"RAMPART_CONSOLE": None, "RAMPART_API_KEY": None,
                                   "RAMPART_DATA_DIR": None, "RAMPART_CONFIG": None}
    r = CliRunner().invoke(cli, list(args), env={**base, **env})
    return r.exit_code, r.output


def test_server_with_config_or_data_dir_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text("")
    code, out = _run("lists", "show", "--server", "https://localhost:1", "--config", str(cfg))
    assert code == 2 and "--server and --config conflict" in out
    code, out = _run("lists", "test", "--server", "https://localhost:1", "--pattern", str(tmp_path),
                     "http://a.example.test/")
    assert code == 2 and "--server and --pattern conflict" in out


def test_a_server_from_the_environment_gives_way_to_a_data_dir_given(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    code, out = _run("lists", "show", "--data-dir", str(data), RAMPART_CONSOLE="https://localhost:1")
    assert code == 0 and out == "both lists are empty\n"


def test_key_and_ca_options_without_a_server_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "ca.pem"
    f.write_text("")
    code, out = _run("update", "now", "--server-ca", str(f))
    assert code == 2 and "--server-ca is for --server" in out


# ---------------------------------------------------------------- exchanges over TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    data = tmp_path_factory.mktemp("ca")
    ca = certs.CA.ensure(data)
    return certs.server_context(ca, ["localhost", "127.0.0.1"], state_dir=data / "tls"), data / "ca.pem"


Reply = Callable[[bytes], bytes | None]


@pytest.fixture
def serve(tls: tuple[ssl.SSLContext, Path]) -> Iterator[Callable[[Reply], Remote]]:
    """A TLS server on 127.0.0.1 answering one request with ``reply(head)`` (None: no answer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def start(reply: Reply) -> Remote:
        def run() -> None:
            try:
                raw, _ = listener.accept()
                conn = tls[0].wrap_socket(raw, server_side=True)
            except OSError:
                return
            held.append(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            answer = reply(head)
            if answer is None:
                stop.wait(30)
                return
            with contextlib.suppress(OSError):
                conn.sendall(answer)

        threading.Thread(target=run, daemon=True).start()
        port = listener.getsockname()[1]
        return Remote(f"https://127.0.0.1:{port}", key="rpk_test", ca=tls[1], timeout=5)

    yield start
    stop.set()
    for c in held:
        c.close()
    listener.close()


def _http(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_the_key_is_sent_as_a_bearer_token_and_json_comes_back(serve: Callable[[Reply], Remote]) -> None:
    seen: list[bytes] = []

    def reply(head: bytes) -> bytes:
        seen.append(head)
        return _http(200, b'{"entries": []}')

    assert serve(reply).get("/api/lists") == {"entries": []}
    assert b"Authorization: Bearer rpk_test\r\n" in seen[0] and seen[0].startswith(b"GET /api/lists ")


def test_an_answer_over_the_bound_is_refused(serve: Callable[[Reply], Remote]) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER + 1)
    with pytest.raises(RemoteFailed, match="answered more than 4 MiB; refused"):
        serve(lambda _: big).get("/api/status")


def test_an_answer_without_a_length_over_the_bound_is_refused(serve: Callable[[Reply], Remote]) -> None:
    body = b"x" * (MAX_ANSWER + 10)
    with pytest.raises(RemoteFailed, match="answered more than 4 MiB"):
        serve(lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body).get("/api/status")


def test_an_answer_that_is_not_json_asks_whether_it_is_the_console(
        serve: Callable[[Reply], Remote]) -> None:
    with pytest.raises(RemoteFailed, match="not with JSON as the admin API does") as e:
        serve(lambda _: _http(200, b"<html>hello</html>")).get("/api/status")
    assert e.value.exit_code == 1


def test_a_refusal_carries_the_servers_message(serve: Callable[[Reply], Remote]) -> None:
    body = _error("bad_field", "field 'list' must be 'blocked' or 'approved'")
    with pytest.raises(RemoteRefused, match="refused /api/lists \\(400\\): field 'list' must be") as e:
        serve(lambda _: _http(400, body)).post("/api/lists", {"list": "x"})
    assert e.value.exit_code == 2


def test_a_server_that_never_answers_times_out(serve: Callable[[Reply], Remote]) -> None:
    remote = serve(lambda _: None)
    slow = Remote(remote.url, ca=remote.ca, timeout=0.5)
    with pytest.raises(RemoteFailed, match=r"did not answer within 0\.5 s"):
        slow.get("/api/status")


def test_a_server_certificate_from_another_ca_is_not_trusted(
        serve: Callable[[Reply], Remote], tmp_path: Path) -> None:
    certs.CA.ensure(tmp_path)
    remote = serve(lambda _: _http(200, b"{}"))
    with pytest.raises(RemoteFailed, match="certificate not trusted by --server-ca"):
        Remote(remote.url, ca=tmp_path / "ca.pem").get("/api/status")
