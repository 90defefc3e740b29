"""`jiefen serve` over HTTPS with a self-signed certificate (cameras need a secure context)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from config.settings import Settings
from jiefen.tls import ssl_context


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
