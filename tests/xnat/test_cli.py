"""``bidsbridge xnat check`` diagnoses and ``xnat push`` exit codes, on real sockets."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.xnat.conftest import PASSWORDS, PROJECT
from tests.xnat.test_push import SESSION_LABEL, expected_files, stored_files
from tests.xnat_emulator import XnatEmulator
from xnat_container.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch):
    def login(user: str, password: str | None = None) -> None:
        monkeypatch.setenv("XNAT_USER", user)
        monkeypatch.setenv("XNAT_PASS", PASSWORDS[user] if password is None else password)

    return login


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A self-signed HTTPS server (not an XNAT: it answers 404 to everything); yields (url, cert)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class NotXnat(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotXnat)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_check_ok(emulator: XnatEmulator, as_user, capsys):
    as_user("uploader")
    code, out = run(capsys, "xnat", "check", "--server", emulator.url, "--project", PROJECT)
    print(out)
    assert code == 0
    assert out == f"OK: XNAT 1.8.10 at {emulator.url}, uploader is member of project {PROJECT}"


def test_check_wrong_url(as_user, capsys):
    as_user("uploader")
    url = f"http://127.0.0.1:{free_port()}"
    code, out = run(capsys, "xnat", "check", "--server", url)
    print(out)
    assert code == 1
    assert out == f"cannot reach XNAT at {url}: connection refused (check the URL and that XNAT is running)"


def test_check_certificate_for_another_host(tls_server, as_user, capsys):
    url, cert = tls_server
    as_user("uploader")
    other = url.replace("127.0.0.1", "localhost")  # the certificate names only IP 127.0.0.1
    code, out = run(capsys, "xnat", "check", "--server", other, "--ca-bundle", str(cert))
    print(out)
    assert code == 1
    assert out == f"TLS failure talking to {other}: the server's certificate is not valid for the host name of the URL"


def test_check_url_that_is_not_xnat(tls_server, as_user, capsys):
    url, cert = tls_server
    as_user("uploader")
    code, out = run(capsys, "xnat", "check", "--server", url, "--ca-bundle", str(cert))
    print(out)
    assert code == 1 and "not an XNAT at this URL" in out and "404" in out


def test_check_web_server_that_is_not_xnat(as_user, capsys):
    class Portal(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        as_user("uploader")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, out = run(capsys, "xnat", "check", "--server", url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    print(out)
    assert code == 1 and "without confirming a login: not an XNAT at this URL" in out


def test_check_wrong_password(emulator: XnatEmulator, as_user, capsys):
    as_user("uploader", "not-it-Pw-000")
    code, out = run(capsys, "xnat", "check", "--server", emulator.url, "--project", PROJECT)
    print(out)
    assert code == 1
    assert out == (
        f"XNAT at {emulator.url} refused the credentials of user 'uploader': wrong username or password "
        "(or an expired token)"
    )
    assert "not-it-Pw-000" not in out


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("outsider", "outsider has no access to project BIDSBRIDGE_P1 (or it does not exist)"),
        ("reader", "reader can only read project BIDSBRIDGE_P1 (role collaborator)"),
    ],
)
def test_check_project_access(emulator: XnatEmulator, as_user, capsys, user, expected):
    as_user(user)
    code, out = run(capsys, "xnat", "check", "--server", emulator.url, "--project", PROJECT)
    print(out)
    assert code == 1 and expected in out and "\n" not in out


def test_check_https_to_plain_http(emulator: XnatEmulator, as_user, capsys):
    as_user("uploader")
    url = emulator.url.replace("http://", "https://")
    code, out = run(capsys, "xnat", "check", "--server", url)
    print(out)
    assert code == 1
    assert (
        out
        == f"TLS failure talking to {url}: the server does not speak TLS on this port (should the URL start with http://?)"
    )


def test_check_self_signed_certificate(tls_server, as_user, capsys):
    url, _cert = tls_server
    as_user("uploader")
    code, out = run(capsys, "xnat", "check", "--server", url)
    print(out)
    assert code == 1
    assert out.startswith(f"TLS failure talking to {url}: certificate verification failed (self-signed certificate")
    assert out.endswith("set CaBundle to the CA that signed it")


def test_check_by_alias_from_config(emulator: XnatEmulator, tmp_path, capsys, monkeypatch):
    secret = tmp_path / "xnat.secret"
    secret.write_text(PASSWORDS["uploader"] + "\n")
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps({"BidsBridge": {"Destinations": {"site": {
        "Url": emulator.url, "Username": "uploader", "PasswordFile": str(secret)}}}}))  # fmt: skip
    monkeypatch.delenv("XNAT_USER", raising=False)
    code, out = run(capsys, "xnat", "check", "--server", "site", "--config", str(config), "--project", PROJECT)
    assert code == 0, out
    code, out = run(capsys, "xnat", "check", "--server", "elsewhere", "--config", str(config))
    assert code == 2 and "no destination 'elsewhere'" in out and "known: site" in out
    code, out = run(capsys, "xnat", "check", "--server", "site")
    assert code == 2 and "--config" in out


def test_push_exit_codes(xa30_bids: Path, emulator: XnatEmulator, as_user, capsys, tmp_path):
    as_user("uploader", "not-it-Pw-000")
    code, out = run(capsys, "xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT)
    assert code == 1 and "refused the credentials" in out
    assert emulator.inventory().files == ()

    as_user("uploader")
    report = tmp_path / "report.json"
    argv = ["xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT, "--report", str(report)]
    code, out = run(capsys, *argv)
    print(out)
    assert code == 0
    assert f"{PROJECT}/12343hucheng/{SESSION_LABEL} (XNAT_E00001)" in out
    assert stored_files(emulator) == expected_files(xa30_bids)
    (record,) = json.loads(report.read_text())
    assert record["files_uploaded"] == record["files_verified"] == len(expected_files(xa30_bids))

    code, out = run(capsys, *argv[:-2], "--subject", "12343hucheng", "--session", "20220711")
    assert code == 0 and "0 files uploaded" in out

    code, out = run(capsys, "xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT,
                    "--subject", "nobody")  # fmt: skip
    assert code == 1 and "no converted session for sub-nobody" in out

    code, out = run(capsys, "xnat", "push", str(xa30_bids), "--server", emulator.url, "--project", PROJECT,
                    "--session", "20220711")  # fmt: skip
    assert code == 2

    emulator.make_unreachable()
    code, out = run(capsys, *argv, "--retries", "1")
    assert code == 1 and "temporary: run the same command again later" in out
