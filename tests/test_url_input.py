"""Image URLs: every SSRF rule refused with its reason, against a real HTTP server on 127.0.0.1.

Loopback is refused by default, so the tests that fetch from the local server allow 127.0.0.1
explicitly (the BONE_XRAY_URL_ALLOW setting, off by default)."""

from __future__ import annotations

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.conftest import png_bytes, synthetic_radiograph
from utils.adapters.url_input import (
    ADDRESS_HINT,
    ALLOW_ENV,
    Limits,
    UrlRefused,
    allowed_networks,
    fetch_image_bytes,
    refusal_reason,
)

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]
FILM = png_bytes((synthetic_radiograph(seed=11) * 255).astype(np.uint8))


class Handler(BaseHTTPRequestHandler):
    seen_hosts: list[str] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def send_body(self, body: bytes, content_type="image/png", length=True):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        Handler.seen_hosts.append(self.headers.get("Host"))
        port = self.server.server_address[1]
        if self.path == "/film.png":
            self.send_body(FILM, content_type="text/plain")  # a wrong type: the bytes decide
        elif self.path == "/to-film":
            self.redirect("/film.png")
        elif self.path == "/to-private":
            self.redirect("http://10.0.0.5/film.png")
        elif self.path == "/to-metadata":
            self.redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path.startswith("/loop"):
            hop = int(self.path[5:] or 0)
            self.redirect(f"http://127.0.0.1:{port}/loop{hop + 1}")
        elif self.path == "/huge":  # no Content-Length: only counting while streaming catches it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit, as it should
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            time.sleep(3)
            self.close_connection = True
        elif self.path == "/page":
            self.send_body(b"<html><body>not an image</body></html>", content_type="image/png")
        elif self.path == "/missing":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(500)
            self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/film.png", "127.0.0.1 is a loopback address"),
    ("http://10.0.0.5/film.png", "10.0.0.5 is a private address"),
    ("http://192.168.1.20/film.png", "192.168.1.20 is a private address"),
    ("http://172.16.0.1/film.png", "172.16.0.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata service's link-local address"),
    ("http://169.254.10.1/", "169.254.10.1 is a link-local address"),
    ("http://100.64.0.1/", "100.64.0.1 is a carrier-grade NAT address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::]/", ":: is an unspecified address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fc00::1]/", "fc00::1 is a private address"),
    ("http://[ff02::1]/", "ff02::1 is a multicast address"),
    ("http://[::ffff:10.0.0.5]/", "::ffff:a00:5 is a private address (10.0.0.5) inside an IPv6 address"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 is a loopback address (127.0.0.1) inside an IPv6 address"),
    ("http://[::ffff:169.254.169.254]/", "the cloud metadata service's link-local address (169.254.169.254)"),
    ("http://[64:ff9b::a00:5]/", "64:ff9b::a00:5 is a private address (10.0.0.5) inside an IPv6 address"),
    ("http://[2002:a00:5::1]/", "2002:a00:5::1 is a private address (10.0.0.5) inside an IPv6 address"),
])
def test_every_non_public_address_is_refused_with_its_reason(url, reason):
    with pytest.raises(UrlRefused) as refused:
        fetch_image_bytes(url, allow=[])
    assert str(refused.value).startswith("refused: ") and reason in str(refused.value)


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/film.png", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://example.com/", "only http and https"),
    ("http://user:secret@example.com/film.png", "user name or password"),
    ("http://user@example.com/film.png", "user name or password"),
    ("http:///film.png", "has no host"),
])
def test_other_schemes_credentials_and_malformed_urls_are_refused(url, reason):
    with pytest.raises(UrlRefused, match=reason) as refused:
        fetch_image_bytes(url, allow=[])
    assert str(refused.value).endswith(".") and ALLOW_ENV not in str(refused.value)  # the hint cannot help here


def test_a_host_name_is_checked_on_every_address_it_resolves_to():
    def resolver(host, port):  # one public answer and one private answer
        return ["93.184.216.34", "10.1.2.3"]

    with pytest.raises(UrlRefused, match="10.1.2.3 is a private address"):
        fetch_image_bytes("http://films.example/film.png", allow=[], resolver=resolver)


def test_it_connects_to_the_address_it_checked(server):
    """The resolver's one answer is the address used (no second look-up can swap it) and the
    Host header stays the URL's."""
    port = server.rsplit(":", 1)[1]
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return ["127.0.0.1"]

    Handler.seen_hosts.clear()
    body = fetch_image_bytes(f"http://films.example:{port}/film.png", allow=LOOPBACK, resolver=resolver)
    assert body == FILM
    assert lookups == ["films.example"]
    assert Handler.seen_hosts == [f"films.example:{port}"]


def test_loopback_needs_the_allow_list(server, monkeypatch):
    monkeypatch.delenv("BONE_XRAY_URL_ALLOW", raising=False)
    with pytest.raises(UrlRefused, match="127.0.0.1 is a loopback address"):
        fetch_image_bytes(f"{server}/film.png")
    monkeypatch.setenv("BONE_XRAY_URL_ALLOW", "127.0.0.1/32, ::1/128")
    assert fetch_image_bytes(f"{server}/film.png") == FILM
    monkeypatch.setenv("BONE_XRAY_URL_ALLOW", "not-a-network")
    with pytest.raises(UrlRefused, match="not an address or network"):
        allowed_networks()


def test_redirects_are_followed_and_each_hop_is_checked(server):
    assert fetch_image_bytes(f"{server}/to-film", allow=LOOPBACK) == FILM
    with pytest.raises(UrlRefused, match="refused: 10.0.0.5 is a private address"):
        fetch_image_bytes(f"{server}/to-private", allow=LOOPBACK)
    with pytest.raises(UrlRefused, match="169.254.169.254 is the cloud metadata"):
        fetch_image_bytes(f"{server}/to-metadata", allow=LOOPBACK)
    with pytest.raises(UrlRefused, match="more than 3 redirects"):
        fetch_image_bytes(f"{server}/loop0", allow=LOOPBACK)


def test_an_oversized_body_without_content_length_is_cut(server):
    with pytest.raises(UrlRefused, match="larger than the 1 MB limit"):
        fetch_image_bytes(f"{server}/huge", limits=Limits(max_bytes=2**20), allow=LOOPBACK)


def test_a_slow_server_times_out(server):
    started = time.monotonic()
    with pytest.raises(UrlRefused, match="stopped sending for more than 0.5 s"):
        fetch_image_bytes(f"{server}/slow", limits=Limits(read_timeout=0.5), allow=LOOPBACK)
    assert time.monotonic() - started < 2.5


def test_http_errors_and_closed_ports_are_refused_with_a_reason(server):
    with pytest.raises(UrlRefused, match="answered HTTP 404") as refused:
        fetch_image_bytes(f"{server}/missing", allow=LOOPBACK)
    assert str(refused.value) == "refused: the server answered HTTP 404, not an image."
    with pytest.raises(UrlRefused, match="could not be reached"):
        fetch_image_bytes("http://127.0.0.1:9/film.png", allow=LOOPBACK)  # the discard port: nothing listens


def test_public_addresses_pass_the_address_rules():
    for text in ("8.8.8.8", "93.184.216.34", "2001:4860::8888"):
        assert refusal_reason(ipaddress.ip_address(text)) is None


def test_the_download_limit_is_the_apps_upload_limit():
    import tomllib
    from pathlib import Path

    from utils.adapters.url_input import MAX_DOWNLOAD_BYTES

    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert MAX_DOWNLOAD_BYTES == config["server"]["maxUploadSize"] * 2**20


def test_a_non_image_body_gets_the_decoders_message(server, classifier):
    from utils.adapters.url_input import fetch_image_bytes as fetch

    prediction = classifier.predict_bytes(f"{server}/page", fetch(f"{server}/page", allow=LOOPBACK))
    assert prediction.label is None and prediction.error


def test_the_cli_classifies_urls_mixed_with_files(server, tmp_path, monkeypatch, capsys, bundle_dir):
    import json

    from utils import cli

    monkeypatch.setenv("BONE_XRAY_URL_ALLOW", "127.0.0.1/32")
    (tmp_path / "local.png").write_bytes(FILM)
    code = cli.main(["predict", f"{server}/film.png", str(tmp_path), f"{server}/to-private", f"{server}/page"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # two of the four inputs could not be classified; the others were
    assert [r["path"] for r in records] == [f"{server}/film.png", str(tmp_path / "local.png"),
                                           f"{server}/to-private", f"{server}/page"]
    by_url, local = records[0], records[1]
    assert by_url["error"] is None and by_url["probabilities"] == local["probabilities"]  # the same bytes
    assert records[2]["error"] == f"refused: 10.0.0.5 is a private address. {ADDRESS_HINT}"
    assert records[2]["label"] is None
    assert records[3]["error"] and records[3]["label"] is None


@pytest.mark.parametrize("url, scheme", [("ftp://127.0.0.1/x.jpg", "ftp"), ("file:///etc/passwd", "file")])
def test_the_cli_answers_any_scheme_with_the_url_rules_not_as_a_file_path(url, scheme, capsys, bundle_dir):
    import json

    from utils import cli

    code = cli.main(["predict", url])
    record = json.loads(capsys.readouterr().out)
    assert code == 1 and record["path"] == url  # kept as given, not folded into a path
    assert record["error"] == f"refused: only http and https URLs are fetched, not {scheme}."


def test_the_app_classifies_a_pasted_url_and_explains_a_refusal(server, monkeypatch, bundle_dir):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    monkeypatch.setenv("BONE_XRAY_URL_ALLOW", "127.0.0.1/32")
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    app.run()
    box = next(t for t in app.text_input if t.label.endswith("paste an image URL"))
    box.set_value(f"{server}/film.png")
    app.run()
    assert not app.exception
    assert len([m for m in app.markdown if m.value.startswith("### Verdict")]) == 1
    assert any(b.label == "PDF report for this image" for b in app.button)
    assert any(h.value == "This session (1)" for h in app.sidebar.header)

    box = next(t for t in app.text_input if t.label.endswith("paste an image URL"))
    box.set_value("http://169.254.169.254/latest/meta-data/")
    app.run()
    assert not app.exception
    assert any("169.254.169.254 is the cloud metadata service's link-local address" in e.value for e in app.error)
    assert not [m for m in app.markdown if m.value.startswith("### Verdict")]
