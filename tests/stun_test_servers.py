"""A STUN responder and a TURN server's authentication step, on 127.0.0.1, for the tests.

Written from RFC 8489 (STUN) and RFC 8656 (TURN), not from aioice: a hand-made codec, so that
what the server's aiortc peer sends is checked by something other than the library that sent
it. The STUN responder answers Binding requests with the sender's address. The TURN side does
only what proves the credentials: it answers an Allocate with ``401`` (realm and nonce), checks
the retried Allocate's MESSAGE-INTEGRITY against the long-term key ``MD5(username ":" realm
":" password)`` for the password the test expects, records the result, and refuses the
allocation (``508``, signed with that key so that the client stops at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST, BINDING_SUCCESS = 0x0001, 0x0101
ALLOCATE_REQUEST, ALLOCATE_ERROR = 0x0003, 0x0113
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
REALM, NONCE, XOR_MAPPED_ADDRESS = 0x0014, 0x0015, 0x0020
REALM_VALUE, NONCE_VALUE = b"jiefen.test", b"0123456789abcdef"


@dataclass(frozen=True, slots=True)
class StunMessage:
    kind: int
    transaction_id: bytes
    #: (type, value, offset of the attribute in the message), in order.
    attributes: tuple[tuple[int, bytes, int], ...]
    raw: bytes

    def get(self, kind: int) -> bytes | None:
        return next((value for t, value, _ in self.attributes if t == kind), None)

    def integrity_holds(self, key: bytes) -> bool:
        """MESSAGE-INTEGRITY (RFC 8489 14.5): HMAC-SHA1 over the message up to the attribute,
        with the header's length counting up to the end of the attribute."""
        for kind, value, offset in self.attributes:
            if kind == MESSAGE_INTEGRITY:
                header = struct.pack("!HH", self.kind, offset - 20 + 24) + self.raw[4:20]
                expected = hmac.new(key, header + self.raw[20:offset], hashlib.sha1).digest()
                return hmac.compare_digest(value, expected)
        return False


def parse(data: bytes) -> StunMessage | None:
    if len(data) < 20:
        return None
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE or len(data) != 20 + length:
        return None
    attributes = []
    offset = 20
    while offset + 4 <= len(data):
        attr_type, attr_length = struct.unpack("!HH", data[offset : offset + 4])
        attributes.append((attr_type, data[offset + 4 : offset + 4 + attr_length], offset))
        offset += 4 + attr_length + (-attr_length % 4)
    return StunMessage(kind, data[8:20], tuple(attributes), data)


def build(
    kind: int, transaction_id: bytes, attributes: list[tuple[int, bytes]], key: bytes | None = None
) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attributes)
    if key is not None:
        header = struct.pack("!HHI", kind, len(body) + 24, MAGIC_COOKIE) + transaction_id
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
    return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + transaction_id + body


def long_term_key(username: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{REALM_VALUE.decode()}:{password}".encode()).digest()


@dataclass
class Allocation:
    """One authenticated Allocate request: who asked, and whether its integrity held."""

    username: str
    authenticated: bool
    sender: tuple[str, int]


@dataclass
class FakeStunTurnServer(asyncio.DatagramProtocol):
    """Answers Binding requests; checks Allocate credentials with ``password_for(username)``."""

    password_for: Callable[[str], str | None] = lambda username: None
    bindings: list[tuple[str, int]] = field(default_factory=list)
    allocations: list[Allocation] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse(data)
        if message is None or self.transport is None:
            return
        if message.kind == BINDING_REQUEST:
            self.bindings.append(addr)
            self.transport.sendto(self._binding_success(message, addr), addr)
        elif message.kind == ALLOCATE_REQUEST:
            self.transport.sendto(self._allocate_answer(message, addr), addr)

    def _binding_success(self, message: StunMessage, addr: tuple[str, int]) -> bytes:
        address = int(ipaddress.IPv4Address(addr[0]))
        value = struct.pack("!BBHI", 0, 1, addr[1] ^ (MAGIC_COOKIE >> 16), address ^ MAGIC_COOKIE)
        return build(BINDING_SUCCESS, message.transaction_id, [(XOR_MAPPED_ADDRESS, value)])

    def _allocate_answer(self, message: StunMessage, addr: tuple[str, int]) -> bytes:
        username = message.get(USERNAME)
        if username is None or message.get(MESSAGE_INTEGRITY) is None:
            return self._error(message, 401, [(REALM, REALM_VALUE), (NONCE, NONCE_VALUE)])
        name = username.decode()
        password = self.password_for(name)
        key = long_term_key(name, password) if password is not None else None
        authenticated = key is not None and message.integrity_holds(key)
        self.allocations.append(Allocation(name, authenticated, addr))
        if not authenticated:
            return self._error(message, 401, [(REALM, REALM_VALUE), (NONCE, NONCE_VALUE)])
        return self._error(message, 508, [], key=key)  # "Insufficient Capacity": stop here

    def _error(
        self,
        message: StunMessage,
        code: int,
        extra: list[tuple[int, bytes]],
        key: bytes | None = None,
    ) -> bytes:
        error = struct.pack("!HBB", 0, code // 100, code % 100) + b"refused by the test"
        return build(ALLOCATE_ERROR, message.transaction_id, [(ERROR_CODE, error), *extra], key)


async def start_fake_stun_turn_server(
    password_for: Callable[[str], str | None] = lambda username: None,
) -> tuple[FakeStunTurnServer, asyncio.DatagramTransport]:
    """The server on 127.0.0.1, a port of its own; close the transport when done."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: FakeStunTurnServer(password_for=password_for), local_addr=("127.0.0.1", 0)
    )
    return protocol, transport
