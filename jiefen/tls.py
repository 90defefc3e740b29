"""HTTPS for ``jiefen serve``: cameras and microphones need a secure context off localhost.

``JIEFEN_TLS_CERT_FILE`` + ``JIEFEN_TLS_KEY_FILE`` serve a real certificate.
``JIEFEN_TLS_SELF_SIGNED`` serves a throw-away certificate under ``data_dir/tls/`` for trying
the join page from a phone on the local network: the phone warns that nobody vouches for it,
and must be told to go on, but the certificate does name every address the phone may use —
localhost, ``127.0.0.1``, ``::1``, this machine's hostname (and ``<hostname>.local``, its
mDNS name), every address of its network interfaces, and the configured host — so the name
matches whichever one the phone opens. The names are found on the machine alone (its
interfaces, by ``getifaddrs``), never by asking the network. The certificate is made again
when that set of names changes (a new Wi-Fi network, another ``--host``) or when it is close
to expiring; otherwise the same one is reused, so a phone told once to trust it keeps it.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import ifaddr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config.settings import Settings

log = logging.getLogger(__name__)

CERTIFICATE_DAYS = 365
#: A certificate closer than this to its end is made again.
RENEW_BEFORE = datetime.timedelta(days=30)
_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertificateNames:
    """The subjectAltNames of the self-signed certificate: host names and IP addresses."""

    dns: frozenset[str]
    ips: frozenset[IPAddress]

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(self.dns)]
        names += [x509.IPAddress(ip) for ip in sorted(self.ips, key=lambda ip: (ip.version, ip))]
        return names

    def describe(self) -> str:
        return ", ".join(
            [*sorted(self.dns), *(str(ip) for ip in sorted(self.ips, key=lambda i: (i.version, i)))]
        )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` to serve plain HTTP."""
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        cert, key = settings.tls_cert_file, settings.tls_key_file
    elif settings.tls_self_signed:
        cert, key = self_signed_certificate(
            settings.data_dir / "tls", local_certificate_names(settings.host)
        )
    else:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def local_certificate_names(host: str) -> CertificateNames:
    """Every name by which this machine may be reached, found on the machine itself."""
    addresses: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addresses.append(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return certificate_names(host, hostname=socket.gethostname(), interface_addresses=addresses)


def certificate_names(
    host: str, *, hostname: str, interface_addresses: list[str]
) -> CertificateNames:
    """The names for a server listening on ``host`` on a machine called ``hostname`` whose
    interfaces have ``interface_addresses``: loopback always; link-local addresses (which a
    URL can only name with the interface) and a wildcard ``host`` (``0.0.0.0``) never."""
    dns = {"localhost"}
    ips: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for name in (hostname, host):
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if _DNS_NAME.fullmatch(name):
                dns.add(name.lower())
                if "." not in name:
                    dns.add(f"{name.lower()}.local")  # its mDNS name on the local network
            continue
        if not address.is_unspecified and not address.is_link_local:
            ips.add(address)
    for text in interface_addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if not address.is_unspecified and not address.is_link_local:
            ips.add(address)
    return CertificateNames(dns=frozenset(dns), ips=frozenset(ips))


def certificate_names_of(certificate: x509.Certificate) -> CertificateNames | None:
    """The subjectAltNames ``certificate`` carries (``None``: it has none)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    names = extension.value
    return CertificateNames(
        dns=frozenset(name.lower() for name in names.get_values_for_type(x509.DNSName)),
        ips=frozenset(
            ip
            for ip in names.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ),
    )


def self_signed_certificate(directory: Path, names: CertificateNames) -> tuple[Path, Path]:
    """The certificate and key files for ``names``: the ones in ``directory`` when they name
    exactly these and are not about to expire, else new ones (replacing them)."""
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed.key"
    if key_path.exists() and _still_good(cert_path, names):
        return cert_path, key_path
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Jiefen (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _replace_file(key_path, key_pem, mode=0o600)
    _replace_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("made a self-signed certificate for %s", names.describe())
    return cert_path, key_path


def _still_good(cert_path: Path, names: CertificateNames) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    if certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE:
        return False
    return certificate_names_of(certificate) == names


def _replace_file(path: Path, content: bytes, *, mode: int) -> None:
    """Write ``content`` to ``path`` (``mode``) through a new temporary file renamed over it:
    a reader sees the old file or the new one, and a key is never readable by others."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
