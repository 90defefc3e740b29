"""ICE servers through the real rooms: what the ``welcome`` carries, and what the server's own
aiortc peer connection does with them.

A real server on 127.0.0.1:0 with real Redis and PostgreSQL; the STUN and TURN servers are
small UDP responders in the test (``tests/stun_test_servers.py``), which the server's peer
must reach: aioice gathers a server-reflexive candidate from the configured STUN server and a
relayed one from the TURN server, so the peer's Binding and Allocate requests show that the
configuration, TURN credentials included, reached aiortc.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from config.settings import IceServer
from tests.conftest import REDIS_URL
from tests.harness import ADMIN_TOKEN, RunningJiefen, eventually, running_jiefen
from tests.stun_test_servers import FakeStunTurnServer, start_fake_stun_turn_server
from tests.test_room_signalling import Client, file_case, open_room, token_of
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

TURN_SECRET = "turn-shared-secret-for-the-test-only"
TTL_S = 3600


def expected_password(username: str) -> str:
    """The TURN REST password, computed here apart from the code under test."""
    digest = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@asynccontextmanager
async def servers(
    password_for: Any = expected_password,
) -> AsyncIterator[tuple[FakeStunTurnServer, FakeStunTurnServer]]:
    stun, stun_transport = await start_fake_stun_turn_server()
    turn, turn_transport = await start_fake_stun_turn_server(password_for)
    try:
        yield stun, turn
    finally:
        stun_transport.close()
        turn_transport.close()


async def join(jiefen: RunningJiefen, token: str, identity: str | None = None) -> Client:
    ws = await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws")
    client = Client(ws)
    await client.send_join(token, identity)
    return client


async def test_each_welcome_carries_fresh_turn_credentials_and_the_server_uses_its_own(
    pg_database_url: str, redis_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        servers() as (stun, turn),
        running_jiefen(
            database_url=pg_database_url,
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            data_dir=tmp_path,
            admin_api_token=ADMIN_TOKEN,
            ice_servers=[IceServer(urls=f"stun:127.0.0.1:{stun.port}")],
            turn_urls=[f"turn:127.0.0.1:{turn.port}", f"turn:127.0.0.1:{turn.port}?transport=tcp"],
            turn_secret=TURN_SECRET,
            turn_ttl_s=TTL_S,
        ) as jiefen,
    ):
        assert TURN_SECRET not in repr(jiefen.settings)
        room = await open_room(jiefen, await file_case(jiefen))
        before = int(time.time())
        mediator = await join(jiefen, token_of(room["links"]["mediator"]))
        welcome = await mediator.next("welcome")
        after = int(time.time())
        turn_entry, stun_entry = welcome["ice_servers"]
        assert stun_entry == {
            "urls": f"stun:127.0.0.1:{stun.port}",
            "username": None,
            "credential": None,
        }
        assert turn_entry["urls"] == [
            f"turn:127.0.0.1:{turn.port}",
            f"turn:127.0.0.1:{turn.port}?transport=tcp",
        ]
        expiry, user = turn_entry["username"].split(":", 1)
        assert before + TTL_S <= int(expiry) <= after + TTL_S
        assert user == f"{room['room_id']}.mediator"  # room and seat: no name, no openid
        assert turn_entry["credential"] == expected_password(turn_entry["username"])

        # Another seat, another join: credentials of its own.
        applicant = await join(jiefen, token_of(room["links"]["applicant"]), ID_NUMBER[-6:])
        other = (await applicant.next("welcome"))["ice_servers"][0]
        assert other["username"].endswith(f":{room['room_id']}.applicant")
        assert other["credential"] == expected_password(other["username"])
        assert other["credential"] != turn_entry["credential"]

        # The server's own peer for the mediator asked the STUN server for its address and
        # allocated on the TURN server with credentials the TURN server accepts.
        await mediator.next("offer")  # made once the server's peer has gathered candidates
        assert stun.bindings, "the server's peer sent no STUN Binding request"
        allocations = await eventually(lambda: _some(turn.allocations))
        assert allocations, "the server's peer never authenticated an Allocate"
        assert all(a.authenticated for a in allocations), allocations
        assert {a.username.split(":", 1)[1] for a in allocations} == {f"{room['room_id']}.mediator"}
        for client in (mediator, applicant):
            await client.close()
    assert not [r for r in caplog.records if TURN_SECRET in r.getMessage()]


async def test_static_ice_servers_still_reach_the_page_and_the_server(
    pg_database_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Without TURN REST settings the static list is what everyone gets, as configured."""
    async with (
        servers(lambda username: "static-password" if username == "static-user" else None) as (
            stun,
            turn,
        ),
        running_jiefen(
            database_url=pg_database_url,
            redis_url=REDIS_URL,
            redis_prefix=redis_prefix,
            data_dir=tmp_path,
            admin_api_token=ADMIN_TOKEN,
            ice_servers=[
                IceServer(urls=f"stun:127.0.0.1:{stun.port}"),
                IceServer(
                    urls=f"turn:127.0.0.1:{turn.port}",
                    username="static-user",
                    credential="static-password",
                ),
            ],
        ) as jiefen,
    ):
        room = await open_room(jiefen, await file_case(jiefen))
        mediator = await join(jiefen, token_of(room["links"]["mediator"]))
        welcome = await mediator.next("welcome")
        assert welcome["ice_servers"] == [
            {"urls": f"stun:127.0.0.1:{stun.port}", "username": None, "credential": None},
            {
                "urls": f"turn:127.0.0.1:{turn.port}",
                "username": "static-user",
                "credential": "static-password",
            },
        ]
        await mediator.next("offer")
        assert stun.bindings
        allocations = await eventually(lambda: _some(turn.allocations))
        assert [(a.username, a.authenticated) for a in allocations][:1] == [("static-user", True)]
        await mediator.close()


async def _some(items: list[Any]) -> list[Any]:
    return list(items)


def test_turn_settings_go_together_and_take_only_turn_urls() -> None:
    from pydantic import ValidationError

    from config.settings import Settings

    with pytest.raises(ValidationError, match="go together"):
        Settings(turn_urls=["turn:turn.example.cn"])
    with pytest.raises(ValidationError, match="go together"):
        Settings(turn_secret="s")
    with pytest.raises(ValidationError, match="not a TURN URL"):
        Settings(turn_urls=["stun:stun.example.cn"], turn_secret="s")
    settings = Settings(turn_urls=["turns:turn.example.cn:5349?transport=tcp"], turn_secret="s3")
    assert "s3" not in repr(settings) and "s3" not in str(settings.model_dump())


@pytest.mark.parametrize(
    "wrong",
    [
        {},  # the secret without the URLs
        {"turn_urls": ["stun:stun.example.cn"]},
        {"turn_urls": ["turn:turn.example.cn"], "tls_cert_file": "/etc/cert.pem"},
    ],
)
def test_a_setting_refused_does_not_print_the_turn_secret(
    wrong: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a refused configuration prints (stderr, often a service's log) names the setting
    at fault, never the values given, the secrets among them."""
    from pydantic import ValidationError

    from config.settings import Settings

    secret = "Tq8s"  # short: pydantic shortens a long input in the middle, but shows this whole
    monkeypatch.setenv("JIEFEN_TURN_SECRET", secret)
    with pytest.raises(ValidationError) as refused:
        Settings(**wrong)
    assert secret not in str(refused.value)  # what a traceback prints
