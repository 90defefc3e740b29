"""The ``jiefen room`` commands: open a session for a case, list rooms, finalise, verify a
recording, print the signing key. Each takes the settings and the parsed arguments and returns
the exit status (``jiefen.cli`` wires them to the parser)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from config.settings import Settings
from mediation_rooms.room import RoomState

if TYPE_CHECKING:
    from datetime import datetime

    from mediation_rooms.room import SeatRole


def room_finalise(settings: Settings, args: argparse.Namespace) -> int:
    from jiefen.app import recording_finaliser
    from jiefen.errors import ConfigurationError, PermanentJobError
    from mediation_rooms.finalise import RenderFailed
    from state.db import create_engine, migrate
    from state.redis_connection import connect_redis
    from state.signing_key import signing_key_path

    try:
        # Before anything is opened: outside the embedded mode only the configured key signs.
        signing_key_path(settings, embedded=settings.command_embedded)
    except ConfigurationError as error:
        print(f"cannot finalise: {error}", file=sys.stderr)
        return 2

    def show(stage: str, fraction: float) -> None:
        width = 30
        filled = int(width * fraction)
        label = {"rendering": "rendering the court copy", "sealing": "sealing the recording"}
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
            f"{label.get(stage, stage):<26}"
        )
        sys.stderr.flush()

    async def finalise() -> int:
        migrate(settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url)
        redis = connect_redis(settings)
        try:
            try:
                finaliser = recording_finaliser(settings, db=engine, redis=redis)
                done = await finaliser.finalise(args.room_id, on_progress=show, by_hand=True)
            except (PermanentJobError, RenderFailed) as error:
                print(f"\ncannot finalise: {error}", file=sys.stderr)
                return 1  # (a ConfigurationError reaches main: one line, exit code 2)
        finally:
            await redis.aclose()
            await engine.dispose()
        sys.stderr.write("\n")
        if not done.done_now:
            print(f"{args.room_id} was finalised before; nothing to do")
        print(f"recording : {done.directory}")
        print(f"files     : {len(done.manifest['files'])} listed in manifest.json (signed)")
        if done.court_copy is not None:
            print(f"court copy: {done.court_copy} (recorded in court-copy.json, signed)")
        else:
            print(f"court copy: {done.court_copy_missing or 'none (nothing was recorded)'}")
        return 0

    return asyncio.run(finalise())


def room_list(settings: Settings, args: argparse.Namespace) -> int:
    from cases.case_number import CHINA_TZ
    from mediation_rooms.manifest import court_copy_status
    from state import room_store
    from state.db import create_engine

    states = {RoomState(state) for state in args.state or ()}
    if args.missing_court_copy:
        states = {RoomState.ARCHIVED}

    async def run() -> int:
        engine = create_engine(settings.resolved_database_url)
        try:
            rooms = await room_store.list_rooms(
                engine, states=states, case_no=args.case, limit=args.limit
            )
        finally:
            await engine.dispose()
        shown = 0
        for room in rooms:
            status = "-"
            if room.state == RoomState.ARCHIVED:
                status = court_copy_status(settings.recordings_dir / room.room_id)
            if args.missing_court_copy and status != "missing":
                continue
            when = room.scheduled_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
            print(
                f"{room.room_id}  {room.case_no} #{room.session_no}  {when}  "
                f"{room.state:<9}  court copy: {status}"
            )
            shown += 1
        print(f"{shown} room(s)", file=sys.stderr)
        if args.missing_court_copy and shown:
            print("render each with: jiefen room finalise ROOM", file=sys.stderr)
        return 0

    return asyncio.run(run())


def room_verify(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from jiefen.errors import ConfigurationError
    from mediation_rooms.manifest import verify_recording
    from state.signing_key import (
        load_signing_key,
        public_key_from_pem,
        signing_key_path,
    )

    if args.public_key:
        try:
            public_key = public_key_from_pem(Path(args.public_key).read_bytes())
        except (OSError, ValueError) as error:
            print(f"cannot read the public key {args.public_key}: {error}", file=sys.stderr)
            return 2
    else:
        try:
            path = signing_key_path(settings, embedded=settings.command_embedded)
            if not path.exists():
                print("no signing key on this machine: pass --public-key PEM", file=sys.stderr)
                return 2
            public_key = load_signing_key(path).public_key
        except ConfigurationError as error:
            print(f"{error}\n(or pass --public-key PEM)", file=sys.stderr)
            return 2
    directory = Path(args.directory)
    # Room directories are named by their room: a manifest of another room does not pass.
    room_id = directory.resolve().name if directory.resolve().name.startswith("rm") else None
    result = verify_recording(directory, public_key, room_id)
    if result.ok:
        assert result.manifest is not None
        print(
            f"OK: signature valid; {result.checked_files} files match their digests "
            f"(case {result.manifest['case_no']}, session {result.manifest['session_no']})"
        )
        if result.court_copy is not None:
            print(
                f"court copy {result.court_copy['file']['name']}: its signed record holds and "
                "names this manifest"
            )
        elif result.court_copy_missing:
            print(
                "court copy: not rendered yet (the evidence above is sealed); "
                f"render it with `jiefen room finalise {result.manifest['room_id']}`"
            )
        return 0
    print("NOT VERIFIED:", file=sys.stderr)
    for problem in result.problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def room_signing_key(settings: Settings, args: argparse.Namespace) -> int:
    from jiefen.errors import ConfigurationError
    from state.signing_key import load_or_create_signing_key

    try:
        key = load_or_create_signing_key(settings, embedded=settings.command_embedded)
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        return 2
    print(key.public_pem(), end="")
    print(f"key id: {key.key_id}", file=sys.stderr)
    return 0


def room_open(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bot.outbox import Outbox
    from cases.case_number import CHINA_TZ
    from mediation_rooms.room import SeatRole
    from mediation_rooms.room_service import RoomService
    from state.db import create_engine, migrate
    from state.job_queue import JobQueue
    from state.personal_data import PersonalDataProtector, load_or_create_data_key
    from state.redis_connection import connect_redis
    from state.room_store import UnknownCase

    now = datetime.now(UTC)
    try:
        at = datetime.fromisoformat(args.at) if args.at else now
    except ValueError:
        print(f"--at {args.at!r} is not a time like 2026-11-23T09:30", file=sys.stderr)
        return 2
    if at.tzinfo is None:
        at = at.replace(tzinfo=CHINA_TZ)
    extras: dict[SeatRole, str] = {}
    if args.interpreter:
        extras[SeatRole.INTERPRETER] = args.interpreter
    if args.agent:
        side, name = args.agent
        if side not in ("applicant", "respondent"):
            print("--agent SIDE is applicant or respondent", file=sys.stderr)
            return 2
        extras[SeatRole(f"{side}_agent")] = name

    def show(
        room_id: str, case_no: str, session_no: int, when: datetime, links: dict[str, str]
    ) -> None:
        shown = when.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
        print(f"room {room_id}: case {case_no}, session {session_no}, at {shown}")
        for seat, link in links.items():
            print(f"  {seat:<17} {link}")

    not_invited: str | None = None
    if settings.command_embedded:
        # On embedded defaults the outbox is in the running `serve`'s memory (the in-process
        # Redis stand-in): only that process can send the invitation, so it opens the room.
        outcome = asyncio.run(
            _open_through_server(settings, args, at.astimezone(UTC), extras, show)
        )
        if isinstance(outcome, int):
            return outcome
        not_invited = outcome

    async def open_room() -> int:
        engine = create_engine(settings.resolved_database_url)
        redis = connect_redis(settings)
        key = load_or_create_data_key(settings, embedded=settings.command_embedded)
        try:
            service = RoomService.from_settings(
                settings,
                db=engine,
                data_key=key,
                protector=PersonalDataProtector(key),
                # Only a shared Redis has an outbox that some worker drains: the in-process
                # stand-in would be this command's own, and what it queued would never be sent.
                outbox=(
                    Outbox(
                        redis,
                        JobQueue(redis, prefix=settings.redis_prefix),
                        prefix=settings.redis_prefix,
                    )
                    if settings.redis_url
                    else None
                ),
            )
            try:
                opened = await service.open_room(
                    args.case_no,
                    scheduled_at=at.astimezone(UTC),
                    now=now,
                    mediator_name=args.mediator,
                    extra_seats=extras,
                )
            except UnknownCase:
                print(f"no case numbered {args.case_no}", file=sys.stderr)
                return 1
        finally:
            await redis.aclose()
            await engine.dispose()
        room = opened.room
        show(room.room_id, room.case_no, room.session_no, room.scheduled_at, opened.links)
        if settings.redis_url:
            print("the applicant's link was also sent to them in WeChat")
        else:
            print(
                f"NOT sent to the applicant in WeChat: {not_invited or 'no shared Redis'}. "
                "On embedded defaults only the running `jiefen serve` can send it (the outbox "
                "is in its memory): start it (`scripts/serve`) and open the session again, or "
                "give the applicant their link yourself.",
                file=sys.stderr,
            )
        return 0

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    return asyncio.run(open_room())


async def _open_through_server(
    settings: Settings,
    args: argparse.Namespace,
    at: datetime,
    extras: dict[SeatRole, str],
    show: Callable[[str, str, int, datetime, dict[str, str]], None],
) -> int | str:
    """Have the installation's running ``serve`` open the room (its rooms API), which also
    queues the applicant's invitation in its outbox. Returns the exit status when that was
    done or refused for good, else why it could not be asked (the caller opens the room
    itself, and says that nobody was invited)."""
    from jiefen.local_server import read_record, record_path
    from mediation_rooms import client_rooms_api
    from state.admin_token import admin_token_path, read_admin_token

    server = read_record(settings.data_dir)
    if server is None:
        where = record_path(settings.data_dir)
        return f"no `jiefen serve` is running for this installation (no {where})"
    token = settings.admin_api_token or read_admin_token(settings)
    if token is None:
        return (
            "no rooms API token to ask the running `jiefen serve` with (no "
            f"JIEFEN_ADMIN_API_TOKEN, no {admin_token_path(settings)})"
        )
    try:
        opened = await client_rooms_api.open_room(
            server.url,
            token,
            args.case_no,
            scheduled_at=at,
            mediator_name=args.mediator,
            extra_seats={seat.value: name for seat, name in extras.items()},
            ssl_context=server.ssl_context(),
        )
    except client_rooms_api.RoomsAPIUnreachable as error:
        if error.maybe_done:
            print(
                f"asked the running `jiefen serve` at {server.url} to open the room, but got no "
                f"answer ({error}): it may have opened it; look before opening another",
                file=sys.stderr,
            )
            return 1
        return (
            f"the `jiefen serve` that last ran here (pid {server.pid}) does not answer at "
            f"{server.url} ({error})"
        )
    except client_rooms_api.RoomsAPIRefused as refused:
        if refused.status == 403:
            return (
                f"the `jiefen serve` at {server.url} refused this installation's rooms API token "
                "(was it started with another JIEFEN_ADMIN_API_TOKEN?)"
            )
        if refused.error == "unknown_case":
            print(f"no case numbered {args.case_no}", file=sys.stderr)
            return 1
        print(f"the running `jiefen serve` did not open the room: {refused}", file=sys.stderr)
        return 2 if refused.status == 400 else 1
    show(opened.room_id, opened.case_no, opened.session_no, opened.scheduled_at, opened.links)
    print(
        f"the applicant's link was also sent to them in WeChat (by `jiefen serve` at {server.url})"
    )
    return 0
