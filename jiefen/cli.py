"""The ``jiefen`` command: ``serve``, ``worker``, ``chat``, ``admin`` and ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from config.settings import Settings
from mediation_rooms.room import RoomState

if TYPE_CHECKING:
    from datetime import datetime

    from mediation_rooms.room import SeatRole


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every plugin it loads at INFO; its warnings and errors still show.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    handler = args.handler
    from jiefen.errors import ConfigurationError

    try:
        return int(handler(settings, args))
    except ConfigurationError as error:
        # A setting to fix, not a bug: one line that says which, not a traceback.
        print(f"jiefen {args.command}: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jiefen", description="解纷 Jiefen 在线调解平台")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the web service (and, embedded, the worker)")
    serve.add_argument("--host", help="listen address (default JIEFEN_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default JIEFEN_PORT or 8080)")
    serve.add_argument(
        "--role",
        choices=["all", "web", "media"],
        default=None,
        help="all (default, or JIEFEN_ROLE): everything in one process; web: webhook, join page "
        "and APIs (run `jiefen worker` beside it); media: hosts rooms (one process per core). "
        "web and media need a shared JIEFEN_REDIS_URL",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run background jobs (outbox, evidence fetch)")
    worker.set_defaults(handler=_worker)

    chat = commands.add_parser("chat", help="talk to the bot from this terminal as a WeChat user")
    chat.add_argument("--url", help="the server (default: the one `jiefen serve` runs)")
    chat.add_argument("--openid", default="o_terminal_user_0001", help="the simulated user")
    chat.add_argument("--mode", choices=["plain", "compat", "safe"], default="safe")
    chat.set_defaults(handler=_chat)

    admin = commands.add_parser("admin", help="inspect organisations, routing, cases and jobs")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    routing = admin_commands.add_parser("routing", help="show organisations and routing rules")
    routing.set_defaults(handler=_admin_routing)
    case = admin_commands.add_parser("case", help="show one case (personal data masked)")
    case.add_argument("case_no")
    case.set_defaults(handler=_admin_case)
    callbacks = admin_commands.add_parser(
        "callbacks", help="residents waiting for a call back (「人工」), oldest first"
    )
    callbacks.add_argument("--handled", type=int, metavar="ID", help="mark request ID as done")
    callbacks.set_defaults(handler=_admin_callbacks)
    dead = admin_commands.add_parser("dead-jobs", help="list background jobs that failed for good")
    dead.set_defaults(handler=_admin_dead_jobs)
    nodes = admin_commands.add_parser(
        "media-nodes", help="the media processes alive now and the rooms on each"
    )
    nodes.set_defaults(handler=_admin_media_nodes)

    room = commands.add_parser("room", help="video mediation rooms")
    room_commands = room.add_subparsers(dest="room_command", required=True)
    room_open = room_commands.add_parser(
        "open", help="open a video session for a case and print its seats' join links"
    )
    room_open.add_argument("case_no")
    room_open.add_argument(
        "--at",
        metavar="TIME",
        help="scheduled time, ISO 8601; China time if no zone is given (default: now)",
    )
    room_open.add_argument("--mediator", default="调解员", help="the mediator's name")
    room_open.add_argument("--interpreter", metavar="NAME", help="open an interpreter's seat")
    room_open.add_argument(
        "--agent",
        nargs=2,
        metavar=("SIDE", "NAME"),
        help="open a seat for a party's agent: SIDE is applicant or respondent",
    )
    room_open.set_defaults(handler=_room_open)
    room_finalise = room_commands.add_parser(
        "finalise",
        help="finalise an ended room's recording now (seal, court copy, archive), or render "
        "the missing court copy of an archived one",
    )
    room_finalise.add_argument("room_id")
    room_finalise.set_defaults(handler=_room_finalise)
    room_list = room_commands.add_parser(
        "list",
        help="list rooms, the latest first, with what became of each recording's court copy",
    )
    room_list.add_argument("--case", metavar="CASE_NO", help="only this case's sessions")
    room_list.add_argument(
        "--state",
        action="append",
        choices=[state.value for state in RoomState],
        help="only rooms in this state (repeatable)",
    )
    room_list.add_argument(
        "--missing-court-copy",
        action="store_true",
        help="only archived rooms whose court copy is missing (to render with `room finalise`)",
    )
    room_list.add_argument("--limit", type=int, default=200, help="at most this many rooms")
    room_list.set_defaults(handler=_room_list)
    room_verify = room_commands.add_parser(
        "verify",
        help="check a recording directory against its signed manifest and court copy record",
    )
    room_verify.add_argument("directory", help="e.g. var/recordings/rm0123456789abcdef")
    room_verify.add_argument(
        "--public-key",
        metavar="PEM",
        help="the platform's public key (default: this installation's own key)",
    )
    room_verify.set_defaults(handler=_room_verify)
    signing_key = room_commands.add_parser(
        "signing-key", help="print the public key that verifies recording manifests (PEM)"
    )
    signing_key.set_defaults(handler=_room_signing_key)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    webhook = bench_commands.add_parser("webhook", help="drive simulated users through intake")
    webhook.add_argument("--url", help="an already running server (default: start one)")
    webhook.add_argument("--users", type=int, default=200, help="simulated residents")
    webhook.add_argument("--concurrency", type=int, default=32, help="senders at once")
    webhook.add_argument("--processes", type=int, default=1, help="server processes to start")
    webhook.add_argument("--mode", choices=["plain", "compat", "safe"], default="safe")
    webhook.add_argument("--json", action="store_true", help="print the figures as JSON")
    webhook.set_defaults(handler=_bench_webhook)
    rooms = bench_commands.add_parser(
        "rooms", help="three-party video rooms with recording against a `jiefen serve` process"
    )
    rooms.add_argument("--rooms", type=int, default=1, help="rooms of three participants")
    rooms.add_argument("--seconds", type=float, default=20.0, help="length of the measured window")
    rooms.add_argument("--redis-url", help="use this Redis (default: the in-process stand-in)")
    rooms.add_argument(
        "--database-url",
        help="the server's SQLAlchemy database URL; the cases and rooms stay in it "
        "(default: SQLite in the temporary data directory)",
    )
    rooms.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    rooms.add_argument("--json", action="store_true", help="print the figures as JSON")
    rooms.set_defaults(handler=_bench_rooms)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from jiefen.access_log import PathOnlyAccessLogger
    from jiefen.app import create_app, freeze_startup_heap, uses_dev_wechat
    from jiefen.local_server import remove_record, write_record
    from jiefen.tls import local_certificate_names, ssl_context

    role = args.role or settings.role
    if role == "worker":
        print(
            "JIEFEN_ROLE=worker is what `jiefen worker` runs; serve all, web or media",
            file=sys.stderr,
        )
        return 2
    if role != "all" and not settings.redis_url:
        print(
            f"jiefen serve --role {role} shares rooms and jobs with other processes through "
            "Redis: set JIEFEN_REDIS_URL (the in-process stand-in is for --role all only)",
            file=sys.stderr,
        )
        return 2
    if role == "media" and not settings.public_url:
        print(
            "jiefen serve --role media writes join links (a seat opened in the session) to the "
            "web processes' join page: set JIEFEN_PUBLIC_URL to their public address, and "
            "JIEFEN_MEDIA_PUBLIC_URL to where browsers reach this process",
            file=sys.stderr,
        )
        return 2
    updates: dict[str, object] = {"role": role, "embedded_worker": role == "all"}
    if args.host:
        updates["host"] = args.host
    if args.port:
        updates["port"] = args.port
    settings = settings.model_copy(update=updates)
    if settings.command_embedded and settings.admin_api_token is None:
        # The commands of this installation (`jiefen room open`) open rooms through this
        # process's rooms API: its in-process Redis holds the outbox of their invitations.
        from state.admin_token import load_or_create_admin_token

        settings = settings.model_copy(
            update={"admin_api_token": load_or_create_admin_token(settings)}
        )
    tls = ssl_context(settings)
    base = settings.resolved_public_url.rstrip("/")
    scheme = "https" if settings.serves_https else "http"
    print(f"解纷 Jiefen serving on {scheme}://{settings.host}:{settings.port}")
    if settings.serves_web:
        print(f"  WeChat webhook : {base}/wechat")
        print(f"  join page      : {base}/join  (links from `jiefen room open CASE_NO`)")
    if settings.hosts_rooms:
        print(
            f"  rooms (media)  : {settings.resolved_media_public_url or 'this address'}"
            f"  (node {settings.resolved_media_node_id})"
        )
    print(f"  health         : {base}/healthz")
    print(f"  database       : {settings.resolved_database_url}")
    print(f"  redis          : {settings.redis_url or 'in-process stand-in (one process only)'}")
    if settings.tls_self_signed:
        names = local_certificate_names(settings.host).describe()
        print(f"  certificate    : self-signed, for {names}")
    if uses_dev_wechat(settings):
        print(
            "  WeChat account : built-in development account (fake WeChat API at /dev/wechat-api)"
        )
        print("  try it         : run `.venv/bin/jiefen chat` in a second terminal")
    sys.stdout.flush()
    app = create_app(settings)
    app.on_startup.append(freeze_startup_heap)  # after the services are built
    if settings.command_embedded:
        # Where the commands beside it find this process (jiefen/local_server.py).
        async def advertise(app: web.Application) -> None:
            write_record(settings)

        async def withdraw(app: web.Application) -> None:
            remove_record(settings)

        app.on_startup.append(advertise)
        app.on_cleanup.append(withdraw)
    web.run_app(
        app,
        loop=new_event_loop(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=PathOnlyAccessLogger,
        ssl_context=tls,
        print=None,
    )
    return 0


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The event loop ``settings.event_loop`` asks for (uvloop when ``auto`` and installed)."""
    if settings.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if settings.event_loop == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from jiefen.app import create_app, freeze_startup_heap

    async def run() -> None:
        worker_settings = settings.model_copy(update={"embedded_worker": True, "role": "worker"})
        app = create_app(worker_settings)
        app.on_startup.append(freeze_startup_heap)
        runner = web.AppRunner(app)
        await runner.setup()  # opens every resource and starts the job loop; serves no HTTP
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        print(
            "解纷 Jiefen worker running (outbox, evidence download, call-back requests,"
            " recording finalisation)"
        )
        sys.stdout.flush()
        try:
            await stop.wait()  # a job in progress finishes; the rest stay queued in Redis
        finally:
            await runner.cleanup()

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=lambda: new_event_loop(settings)) as runner,
    ):
        runner.run(run())
    return 0


def _chat(settings: Settings, args: argparse.Namespace) -> int:
    from bot.chat_terminal import ChatTerminal, default_input, write_line
    from bot.wechat_simulator import CryptoMode
    from jiefen.app import DEV_WECHAT_API_PATH

    base = (args.url or settings.resolved_public_url).rstrip("/")
    terminal = ChatTerminal(
        settings,
        webhook_url=f"{base}/wechat",
        dev_api_url=f"{base}{DEV_WECHAT_API_PATH}",
        openid=args.openid,
        mode=CryptoMode(args.mode),
        write=write_line,
    )
    try:
        return asyncio.run(terminal.run(default_input()))
    except KeyboardInterrupt:
        return 0


def _room_finalise(settings: Settings, args: argparse.Namespace) -> int:
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


def _room_list(settings: Settings, args: argparse.Namespace) -> int:
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


def _room_verify(settings: Settings, args: argparse.Namespace) -> int:
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


def _room_signing_key(settings: Settings, args: argparse.Namespace) -> int:
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


def _room_open(settings: Settings, args: argparse.Namespace) -> int:
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
            _room_open_through_server(settings, args, at.astimezone(UTC), extras, show)
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


async def _room_open_through_server(
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


def _admin_routing(settings: Settings, args: argparse.Namespace) -> int:
    from config.routing import load_routing_table

    table = load_routing_table(settings.routing_file)
    print("organisations:")
    for organisation in table.organisations:
        marker = "  (default)" if organisation == table.default else ""
        print(f"  {organisation.code:<24} {organisation.name}  {organisation.phone or ''}{marker}")
    print("rules (first match wins):")
    for rule in table.rules:
        print(f"  {rule}")
    return 0


def _admin_case(settings: Settings, args: argparse.Namespace) -> int:
    from state import case_store
    from state.db import create_engine

    async def show() -> int:
        engine = create_engine(settings.resolved_database_url)
        try:
            record = await case_store.get_case(engine, args.case_no)
        finally:
            await engine.dispose()
        if record is None:
            print(f"no case {args.case_no}", file=sys.stderr)
            return 1
        print(json.dumps(dataclasses.asdict(record), ensure_ascii=False, indent=2, default=str))
        return 0

    return asyncio.run(show())


def _admin_callbacks(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from state import callback_store
    from state.db import create_engine

    async def run() -> int:
        engine = create_engine(settings.resolved_database_url)
        try:
            if args.handled is not None:
                done = await callback_store.mark_callback_handled(
                    engine, args.handled, datetime.now(UTC)
                )
                print(f"request {args.handled} marked handled" if done else "no such open request")
                return 0 if done else 1
            requests = await callback_store.list_open_callback_requests(engine)
        finally:
            await engine.dispose()
        for request in requests:
            when = request.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
            print(f"#{request.request_id}  {when}  step={request.step or '-'}  {request.note}")
        print(f"{len(requests)} open request(s)", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _admin_dead_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from state.job_queue import JobQueue
    from state.redis_connection import connect_redis

    async def show() -> int:
        redis = connect_redis(settings)
        try:
            dead = await JobQueue(redis, prefix=settings.redis_prefix).dead_jobs()
        finally:
            await redis.aclose()
        for job in dead:
            print(json.dumps(job, ensure_ascii=False))
        print(f"{len(dead)} dead job(s)", file=sys.stderr)
        return 0

    return asyncio.run(show())


def _admin_media_nodes(settings: Settings, args: argparse.Namespace) -> int:
    from mediation_rooms.placement import MediaPlacement
    from state.redis_connection import connect_redis

    if not settings.redis_url:
        print("no JIEFEN_REDIS_URL: media nodes register in a shared Redis", file=sys.stderr)
        return 2

    async def show() -> int:
        redis = connect_redis(settings)
        try:
            statuses = await MediaPlacement(redis, prefix=settings.redis_prefix).nodes()
        finally:
            await redis.aclose()
        for status in statuses:
            print(
                f"{status.node.node_id}  {status.node.signalling_url}  hosting {status.hosting}"
                f"  placed {status.placed}/{status.node.capacity}"
            )
        print(f"{len(statuses)} media node(s) alive", file=sys.stderr)
        return 0

    return asyncio.run(show())


def _bench_webhook(settings: Settings, args: argparse.Namespace) -> int:
    from bot.bench_webhook import run_benchmark

    return run_benchmark(settings, args)


def _bench_rooms(settings: Settings, args: argparse.Namespace) -> int:
    from mediation_rooms.bench_rooms import BenchOptions, run_benchmark

    try:
        options = BenchOptions(
            rooms=args.rooms,
            seconds=args.seconds,
            redis_url=args.redis_url,
            database_url=args.database_url,
            keep=args.keep,
            event_loop=settings.event_loop,
        )
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return run_benchmark(options, as_json=args.json, loop_factory=lambda: new_event_loop(settings))


if __name__ == "__main__":
    raise SystemExit(main())
