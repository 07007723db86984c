"""Fetch an image by URL without letting the URL reach what the server can reach (SSRF).

An adapter at the edge: it returns the bytes (kept in memory, never written to disk), and the
caller classifies them like an upload, with the same magic-byte decoder (the content type is
ignored). The rules, each refusal one sentence that names its reason:
- http and https only; no user name or password in the URL;
- the host is resolved once per hop and every address it resolves to must be public: not
  loopback, private, link-local (the cloud metadata service 169.254.169.254 included),
  carrier-grade NAT, multicast, reserved or unspecified, for IPv4, IPv6 and IPv4 addresses
  embedded in IPv6 (mapped, 6to4, Teredo, NAT64);
- the connection goes to the address that was checked (the Host header and TLS name stay the
  URL's), so a second DNS answer cannot swap it (DNS rebinding);
- redirects are followed by hand, at most MAX_REDIRECTS, each hop checked the same way;
- connect and read timeouts, and an overall deadline;
- the body is counted while streaming and cut at the app's upload limit (Content-Length is
  not trusted).

Networks in the environment variable BONE_XRAY_URL_ALLOW (comma-separated, e.g.
"127.0.0.1/32,::1/128") are allowed despite the rules: off by default, for tests and for
operators who serve images from their own network.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3

MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024  # .streamlit/config.toml server.maxUploadSize (MB)
MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
TOTAL_TIMEOUT_S = 60.0
ALLOW_ENV = "BONE_XRAY_URL_ALLOW"
CHUNK_BYTES = 1 << 16
USER_AGENT = "bone-xray-classifier (image URL input)"
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


ADDRESS_HINT = (
    f"To allow an address on purpose, the operator of the machine that fetches it sets {ALLOW_ENV} (see the README)."
)


class UrlRefused(ValueError):
    """The URL cannot be fetched; str(error) is what the user reads: one sentence, ended, and
    for a refused address the allow-list hint (the only refusal it can help with)."""

    def __init__(self, message: str, address: bool = False) -> None:
        sentence = message if message.endswith(".") else message + "."
        super().__init__(f"{sentence} {ADDRESS_HINT}" if address else sentence)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_DOWNLOAD_BYTES
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    total_timeout: float = TOTAL_TIMEOUT_S


def has_scheme(text: str) -> bool:
    """ "scheme://..." (ftp, file, s3 ...): an address, never a file name, so the URL rules
    answer it (and refuse any scheme but http and https)."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", str(text)) is not None


def allowed_networks(setting: str | None = None) -> list:
    """The operator's allow-list (BONE_XRAY_URL_ALLOW), as ip_network objects."""
    setting = os.environ.get(ALLOW_ENV, "") if setting is None else setting
    networks = []
    for item in filter(None, (s.strip() for s in setting.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise UrlRefused(f"refused: {ALLOW_ENV} holds {item!r}, which is not an address or network") from None
    return networks


def embedded_ipv4(ip) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip) -> str | None:
    """Why this address must not be fetched from ("a private address"), or None if public."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = refusal_reason(inner)
        return f"{reason} ({inner}) inside an IPv6 address" if reason else None
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip in METADATA_ADDRESSES:
        return "the cloud metadata service's link-local address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.version == 4 and ip in CARRIER_GRADE_NAT:
        return "a carrier-grade NAT address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def check_address(ip, allow: list) -> None:
    if any(ip.version == net.version and ip in net for net in allow):
        return
    reason = refusal_reason(ip)
    if reason:
        raise UrlRefused(f"refused: {ip} is {reason}", address=True)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as in the URL (the Host header and the TLS name)
    port: int
    path: str  # path and query
    address: str  # the checked IP to connect to


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlRefused(f"refused: the host name {host!r} does not resolve") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, allow: list, resolver=resolve) -> Target:
    """Parse and check one URL; every address its host resolves to must pass."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"refused: the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused(f"refused: only http and https URLs are fetched, not {scheme or 'a URL without a scheme'}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("refused: the URL carries a user name or password")
    host = parts.hostname
    if not host:
        raise UrlRefused("refused: the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolver(host, port)
    if not addresses:
        raise UrlRefused(f"refused: the host name {host!r} does not resolve")
    for address in addresses:
        check_address(ipaddress.ip_address(address.split("%")[0]), allow)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, addresses[0])


def connection_pool(target: Target, limits: Limits):
    """A urllib3 pool bound to the checked address; TLS verifies the URL's host name."""
    timeout = urllib3.Timeout(connect=limits.connect_timeout, read=limits.read_timeout)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    return urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout, retries=False)


def host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def read_body(response, limits: Limits, deadline: float) -> bytes:
    mb = limits.max_bytes / 2**20
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise UrlRefused(f"refused: the image is larger than the {mb:g} MB limit")
    body, size = [], 0
    for chunk in response.stream(CHUNK_BYTES, decode_content=True):
        size += len(chunk)
        if size > limits.max_bytes:
            raise UrlRefused(f"refused: the image is larger than the {mb:g} MB limit")
        if time.monotonic() > deadline:
            raise UrlRefused(f"refused: the download took longer than {limits.total_timeout:g} s")
        body.append(chunk)
    return b"".join(body)


def fetch_image_bytes(url: str, limits: Limits = Limits(), allow: list | None = None, resolver=resolve) -> bytes:
    """The body of url after the checks above; raises UrlRefused with the reason."""
    allow = allowed_networks() if allow is None else allow
    deadline = time.monotonic() + limits.total_timeout
    for _hop in range(MAX_REDIRECTS + 1):
        target = check_url(url, allow, resolver)
        pool = connection_pool(target, limits)
        try:
            response = pool.urlopen(
                "GET",
                target.path,
                headers={
                    "Host": host_header(target),
                    "User-Agent": USER_AGENT,
                    "Accept": "image/*, application/dicom, */*",
                },
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise UrlRefused(f"refused: the server redirected (HTTP {response.status}) without a location")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise UrlRefused(f"refused: the server answered HTTP {response.status}, not an image")
                return read_body(response, limits, deadline)
            finally:
                response.release_conn()
        except urllib3.exceptions.NewConnectionError:  # a subclass of ConnectTimeoutError, so first
            raise UrlRefused(f"refused: {target.host} could not be reached (the connection was refused)") from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise UrlRefused(
                f"refused: {target.host} did not accept a connection within {limits.connect_timeout:g} s"
            ) from None
        except urllib3.exceptions.ReadTimeoutError:
            raise UrlRefused(
                f"refused: {target.host} stopped sending for more than {limits.read_timeout:g} s"
            ) from None
        except urllib3.exceptions.SSLError:
            raise UrlRefused(f"refused: the TLS certificate of {target.host} could not be verified") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UrlRefused(f"refused: {target.host} could not be reached ({type(reason).__name__})") from None
        finally:
            pool.close()
    raise UrlRefused(f"refused: more than {MAX_REDIRECTS} redirects")
