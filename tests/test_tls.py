"""`jiefen serve` over HTTPS with a self-signed certificate (cameras need a secure context)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from config.settings import Settings
from jiefen.tls import (
    certificate_names,
    certificate_names_of,
    self_signed_certificate,
    ssl_context,
)


async def test_self_signed_https_serves_and_the_certificate_is_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls_self_signed=True)
    context = ssl_context(settings)
    assert context is not None
    key = tmp_path / "tls" / "self-signed.key"
    assert key.stat().st_mode & 0o077 == 0
    first = (tmp_path / "tls" / "self-signed.pem").read_bytes()
    assert ssl_context(settings) is not None
    assert (tmp_path / "tls" / "self-signed.pem").read_bytes() == first

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "self-signed.pem"))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{port}/", ssl=client_context) as response:
                assert await response.text() == "ok"
            # Without trusting it, the certificate is refused: it really is TLS.
            try:
                async with session.get(f"https://localhost:{port}/"):
                    raise AssertionError("an untrusted certificate was accepted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        await runner.cleanup()


def test_plain_http_by_default(tmp_path: Path) -> None:
    assert ssl_context(Settings(data_dir=tmp_path)) is None
    assert Settings(data_dir=tmp_path, tls_self_signed=True).resolved_public_url.startswith("https")


def _names_in(path: Path) -> tuple[set[str], set[str]]:
    names = certificate_names_of(x509.load_pem_x509_certificate(path.read_bytes()))
    assert names is not None
    return set(names.dns), {str(ip) for ip in names.ips}


def _interface_addresses_from_iproute2() -> set[str]:
    """This machine's global addresses as `ip -j addr` lists them (apart from the code)."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("no `ip` command (iproute2) to list the interfaces with")
    listed = json.loads(subprocess.run([ip, "-j", "addr"], capture_output=True, check=True).stdout)
    return {
        info["local"]
        for interface in listed
        for info in interface.get("addr_info", [])
        if info.get("scope") == "global"
    }


def test_the_certificate_names_every_address_of_the_machine(tmp_path: Path) -> None:
    assert ssl_context(Settings(data_dir=tmp_path, tls_self_signed=True, host="0.0.0.0"))
    dns, ips = _names_in(tmp_path / "tls" / "self-signed.pem")
    hostname = socket.gethostname().lower()
    assert {"localhost", hostname} <= dns
    if "." not in hostname:
        assert f"{hostname}.local" in dns
    assert {"127.0.0.1", "::1"} <= ips
    assert "0.0.0.0" not in ips  # a wildcard to listen on, not an address to open
    assert _interface_addresses_from_iproute2() <= ips
    assert not [ip for ip in ips if ipaddress.ip_address(ip).is_link_local]


async def test_a_phone_opening_the_lan_address_gets_a_name_that_matches(tmp_path: Path) -> None:
    """TLS with the hostname checked, as a browser does, by every name a phone may use."""
    lan = sorted(
        a for a in _interface_addresses_from_iproute2() if ipaddress.ip_address(a).version == 4
    )
    if not lan:
        pytest.skip("this machine has no IPv4 address besides loopback")
    settings = Settings(data_dir=tmp_path, tls_self_signed=True, host="0.0.0.0")
    context = ssl_context(settings)
    assert context is not None

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, lan[0], 0, ssl_context=context)  # this machine's own address
    await site.start()
    port = runner.addresses[0][1]
    trusting = ssl.create_default_context(cafile=str(tmp_path / "tls" / "self-signed.pem"))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://{lan[0]}:{port}/", ssl=trusting) as response,
        ):
            assert await response.text() == "ok"
        # The machine's name, checked against the certificate (the address is the same one).
        _, writer = await asyncio.open_connection(
            lan[0], port, ssl=trusting, server_hostname=socket.gethostname()
        )
        writer.close()
        await writer.wait_closed()
        # A name the certificate does not carry is refused: the check really is made.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                lan[0], port, ssl=trusting, server_hostname="not-this-machine.example"
            )
    finally:
        await runner.cleanup()


def test_the_certificate_is_made_again_when_the_names_change(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    home = certificate_names("0.0.0.0", hostname="desk", interface_addresses=["192.168.1.20"])
    cert, key = self_signed_certificate(directory, home)
    first = cert.read_bytes()
    assert self_signed_certificate(directory, home) == (cert, key)
    assert cert.read_bytes() == first  # same names: the phone's trust in it still holds
    # Another network: another address, so another certificate that names it.
    office = certificate_names("0.0.0.0", hostname="desk", interface_addresses=["10.0.8.31"])
    self_signed_certificate(directory, office)
    assert cert.read_bytes() != first
    dns, ips = _names_in(cert)
    assert "10.0.8.31" in ips and "192.168.1.20" not in ips
    assert dns == {"localhost", "desk", "desk.local"}
    assert key.stat().st_mode & 0o077 == 0
    # A configured host is named too: an address, or a name.
    named = certificate_names("jiefen.lan", hostname="desk", interface_addresses=[])
    assert "jiefen.lan" in named.dns and "jiefen.lan.local" not in named.dns
    wildcard = certificate_names("::", hostname="desk", interface_addresses=[])
    assert {str(ip) for ip in wildcard.ips} == {"127.0.0.1", "::1"}


def test_link_local_and_wildcard_addresses_are_left_out() -> None:
    names = certificate_names(
        "0.0.0.0",
        hostname="desk",
        interface_addresses=["fe80::1%eth0", "169.254.3.4", "fd00::2", "192.168.1.20", "bad"],
    )
    assert {str(ip) for ip in names.ips} == {"127.0.0.1", "::1", "fd00::2", "192.168.1.20"}
