"""The ``jiefen`` command: ``serve``, ``worker``, ``chat``, ``admin``, ``room`` and ``bench``.

The parser and the long-running commands live here; the ``room`` and ``admin`` commands in
``jiefen.cli_room`` and ``jiefen.cli_admin``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from config.settings import Settings
from jiefen import cli_admin, cli_room
from mediation_rooms.room import RoomState


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
    routing.set_defaults(handler=cli_admin.admin_routing)
    case = admin_commands.add_parser("case", help="show one case (personal data masked)")
    case.add_argument("case_no")
    case.set_defaults(handler=cli_admin.admin_case)
    callbacks = admin_commands.add_parser(
        "callbacks", help="residents waiting for a call back (「人工」), oldest first"
    )
    callbacks.add_argument("--handled", type=int, metavar="ID", help="mark request ID as done")
    callbacks.set_defaults(handler=cli_admin.admin_callbacks)
    dead = admin_commands.add_parser("dead-jobs", help="list background jobs that failed for good")
    dead.set_defaults(handler=cli_admin.admin_dead_jobs)
    nodes = admin_commands.add_parser(
        "media-nodes", help="the media processes alive now and the rooms on each"
    )
    nodes.set_defaults(handler=cli_admin.admin_media_nodes)

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
    room_open.set_defaults(handler=cli_room.room_open)
    room_finalise = room_commands.add_parser(
        "finalise",
        help="finalise an ended room's recording now (seal, court copy, archive), or render "
        "the missing court copy of an archived one",
    )
    room_finalise.add_argument("room_id")
    room_finalise.set_defaults(handler=cli_room.room_finalise)
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
    room_list.set_defaults(handler=cli_room.room_list)
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
    room_verify.set_defaults(handler=cli_room.room_verify)
    signing_key = room_commands.add_parser(
        "signing-key", help="print the public key that verifies recording manifests (PEM)"
    )
    signing_key.set_defaults(handler=cli_room.room_signing_key)

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
