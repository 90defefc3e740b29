"""Where the embedded ``jiefen serve`` of an installation listens, for the commands beside it.

On embedded defaults some state lives only inside the one ``serve`` process (the in-process
Redis stand-in: the outbox, the job queue), so a command run from another shell that needs it
(``jiefen room open``, whose invitation goes through the outbox) asks that process over HTTP.
``--host``, ``--port`` and the TLS settings given to ``serve`` are in its memory only, so it
writes them down: ``data_dir/run/serve.json`` holds the URL a local client reaches it by, the
certificate to trust for it (the self-signed one) and its process id, written at start-up and
removed at a clean exit. The file sits in the installation's ``data_dir``, so a command finds
the server of its own installation (the one whose database and keys it shares), not whatever
listens on port 8080. A file left by a killed server points at nothing: the command finds no
one answering there and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings


@dataclass(frozen=True, slots=True)
class LocalServer:
    """How a command on this machine reaches the installation's running ``serve``."""

    url: str
    pid: int
    #: The certificate to trust (the self-signed one); ``None``: the system's trust store.
    cafile: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """What to verify the server's certificate with (``None``: the default, or plain HTTP)."""
        if self.cafile is None:
            return None
        return ssl.create_default_context(cafile=str(self.cafile))


def record_path(data_dir: Path) -> Path:
    return data_dir / "run" / "serve.json"


def local_server(settings: Settings) -> LocalServer:
    """This ``serve`` process as a client on the same machine reaches it.

    Plain HTTP and the self-signed certificate (which names loopback): the loopback address,
    or the listening address itself when it is one; a real certificate names the public host,
    so its public URL.
    """
    if settings.tls_cert_file is not None:
        return LocalServer(url=settings.resolved_public_url.rstrip("/"), pid=os.getpid())
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.serves_https else "http"
    cafile = (settings.data_dir / "tls" / "self-signed.pem").resolve()
    return LocalServer(
        url=f"{scheme}://{host}:{settings.port}",
        pid=os.getpid(),
        cafile=cafile if settings.tls_self_signed else None,
    )


def write_record(settings: Settings) -> LocalServer:
    """Write down where this process listens (see the module docstring)."""
    server = local_server(settings)
    path = record_path(settings.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{server.pid}")
    temporary.write_text(
        json.dumps(
            {
                "url": server.url,
                "pid": server.pid,
                "cafile": str(server.cafile) if server.cafile else None,
            }
        )
    )
    os.replace(temporary, path)
    return server


def remove_record(settings: Settings) -> None:
    """Remove the record at exit, if it is still this process's (another may have started)."""
    found = read_record(settings.data_dir)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            record_path(settings.data_dir).unlink()


def read_record(data_dir: Path) -> LocalServer | None:
    """The installation's server as its record says, or ``None`` when there is no record."""
    try:
        raw = json.loads(record_path(data_dir).read_text())
        return LocalServer(
            url=str(raw["url"]),
            pid=int(raw["pid"]),
            cafile=Path(raw["cafile"]) if raw.get("cafile") else None,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: as good as none (a new serve writes it again)
