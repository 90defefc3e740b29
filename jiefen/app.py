"""The composition root: ``create_app(settings)`` builds the whole service from its settings.

Resources (database engine, Redis, the WeChat API client, the background worker) are made in
one cleanup context, in dependency order, and closed in reverse. Nothing here holds logic of its
own: it wires the packages together and exposes them to handlers as typed ``web.AppKey`` state.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
import sqlalchemy
from aiohttp import web
from aiortc import RTCIceServer
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.background_jobs import BackgroundJobs, RetryPolicy
from bot.conversation import ConversationService
from bot.dev_wechat import make_dev_wechat_app
from bot.fake_wechat_api import FakeWeChatAPI
from bot.inbound import WebhookCodec
from bot.outbox import Outbox
from bot.web_webhook import WebhookHandler
from bot.wechat_api import WeChatAPIClient
from cases.service import CaseService
from cases.working_days import parse_holidays
from config.routing import load_routing_table
from config.settings import DEV_WECHAT_APPID, WECHAT_API_BASE, Settings
from jiefen.errors import ConfigurationError
from mediation_rooms import aiortc_hooks
from mediation_rooms.finalise import (
    JOB_FINALISE_RECORDING,
    MAX_RUNTIME_S,
    RecordingFinaliser,
    sweep_unfinalised,
)
from mediation_rooms.media_session import MediaConfig
from mediation_rooms.node_heartbeat import NodeHeartbeat
from mediation_rooms.placement import (
    MediaNode,
    MediaPlacement,
    NodeIdInUse,
    signalling_url_for,
)
from mediation_rooms.room_hub import RoomHub
from mediation_rooms.room_service import RoomService
from mediation_rooms.turn_credentials import TurnRestConfig
from mediation_rooms.web_rooms import add_room_routes
from state import organisation_store
from state.blob_store import LocalBlobStore
from state.db import create_engine, migrate
from state.job_queue import JobQueue
from state.message_gate import MessageGate
from state.personal_data import PersonalDataProtector, load_or_create_data_key
from state.redis_connection import connect_redis
from state.signing_key import load_or_create_signing_key

log = logging.getLogger(__name__)

#: Where the development WeChat API stand-in is mounted when the dev account is in use.
DEV_WECHAT_API_PATH = "/dev/wechat-api"


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived objects of one running process."""

    settings: Settings
    db: AsyncEngine
    redis: aioredis.Redis
    jobs: JobQueue
    cases: CaseService
    webhook: WebhookHandler
    background: BackgroundJobs
    rooms: RoomService
    hub: RoomHub
    finaliser: RecordingFinaliser


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
FAKE_WECHAT = web.AppKey("fake_wechat", FakeWeChatAPI)
ROOM_HUB = web.AppKey("room_hub", RoomHub)
ROOM_SERVICE = web.AppKey("room_service", RoomService)
FINALISER = web.AppKey("finaliser", RecordingFinaliser)
PLACEMENT = web.AppKey("placement", MediaPlacement)


def uses_dev_wechat(settings: Settings) -> bool:
    """True when the built-in development account talks to the built-in WeChat API stand-in."""
    return settings.wechat_appid == DEV_WECHAT_APPID and settings.wechat_api_base == WECHAT_API_BASE


def media_config(settings: Settings) -> MediaConfig:
    """The media plane's configuration from the settings."""
    return MediaConfig(
        ice_servers=tuple(
            RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)
            for server in settings.ice_servers
        ),
        video_codec=settings.video_codec,
        video_bitrate_cap_bps=settings.video_bitrate_cap_bps,
        turn=(
            TurnRestConfig(
                urls=tuple(settings.turn_urls),
                secret=settings.turn_secret.get_secret_value().encode(),
                ttl_s=settings.turn_ttl_s,
            )
            if settings.turn_urls and settings.turn_secret is not None
            else None
        ),
    )


def recording_finaliser(
    settings: Settings, *, db: AsyncEngine, redis: aioredis.Redis, seals: bool = True
) -> RecordingFinaliser:
    """The recording finaliser; with ``seals``, holding the platform's signing key (made on first
    use in embedded mode, else ``JIEFEN_SIGNING_KEY_FILE``). A process that runs no jobs (a
    ``web`` or ``media`` process) only reads the progress and never holds the private key."""
    return RecordingFinaliser(
        db=db,
        redis=redis,
        redis_prefix=settings.redis_prefix,
        recordings_dir=settings.recordings_dir,
        signing_key=load_or_create_signing_key(settings) if seals else None,
        job_attempts=RetryPolicy().max_attempts,  # the workers' policy (BackgroundJobs default)
        font_file=settings.court_copy_font_file,
        fps=settings.court_copy_fps,
    )


def create_app(settings: Settings) -> web.Application:
    """Build the aiohttp application for ``settings`` (resources open when it starts).

    Raises ``ConfigurationError`` when this process is to host video rooms and the installed
    aiortc is not the one the media hooks were written for: forwarding would otherwise fail
    (or silently decode again) only once the first room went live.
    """
    if settings.hosts_rooms:
        try:
            aiortc_hooks.check_compatible()
        except aiortc_hooks.HookError as error:
            raise ConfigurationError(f"cannot host video rooms: {error}") from error
    app = web.Application(client_max_size=settings.wechat_max_body_bytes * 4)
    app[SETTINGS] = settings
    if uses_dev_wechat(settings):
        fake = FakeWeChatAPI(appid=settings.wechat_appid, secret=settings.wechat_secret)
        app[FAKE_WECHAT] = fake
        app.add_subapp(DEV_WECHAT_API_PATH, make_dev_wechat_app(fake))
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_hand_rooms_over)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _health)
    if settings.serves_web:
        app.router.add_get("/wechat", _webhook_verify)
        app.router.add_post("/wechat", _webhook_receive)
    add_room_routes(
        app,
        hub=ROOM_HUB,
        service=ROOM_SERVICE,
        finaliser=FINALISER,
        placement=PLACEMENT,
        admin_token=settings.admin_api_token,
        serves_web=settings.serves_web,
        hosts_rooms=settings.hosts_rooms,
    )
    return app


async def freeze_startup_heap(app: web.Application) -> None:
    """Take everything built at start-up out of the garbage collector's rounds.

    A process imports aiortc, PyAV, NumPy, SQLAlchemy and pydantic and builds its services:
    hundreds of thousands of objects that live as long as the process. Every full collection
    walked them all again (~70 ms each), and the webhook's allocations trigger one every couple
    of thousand messages. ``gc.freeze`` (CPython's own remedy) parks them in a permanent
    generation; what is allocated later is collected as before. A long-running process
    appends this to ``on_startup`` after creating the app (tests, which start many apps in one
    process, do not).
    """
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen: %d objects left out of collections", gc.get_freeze_count())


def media_node(settings: Settings) -> MediaNode:
    """This process as a media node, from the settings."""
    return MediaNode(
        node_id=settings.resolved_media_node_id,
        signalling_url=signalling_url_for(settings.resolved_media_public_url),
        capacity=settings.media_node_capacity,
    )


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(migrate, settings.resolved_database_url)
    db = create_engine(settings.resolved_database_url)
    redis = connect_redis(settings)
    http = aiohttp.ClientSession()
    stop = asyncio.Event()
    worker: asyncio.Task[None] | None = None
    heartbeat: NodeHeartbeat | None = None
    sweeper: asyncio.Task[None] | None = None
    try:
        routing = load_routing_table(settings.routing_file)
        await organisation_store.sync_organisations(db, routing)
        data_key = load_or_create_data_key(settings)
        protector = PersonalDataProtector(data_key)
        jobs = JobQueue(redis, prefix=settings.redis_prefix)
        outbox = Outbox(redis, jobs, prefix=settings.redis_prefix)
        cases = CaseService(
            db=db,
            routing=routing,
            holidays=parse_holidays(settings.holidays),
            protector=protector,
        )
        api_base = settings.wechat_api_base
        if uses_dev_wechat(settings):
            api_base = settings.resolved_public_url.rstrip("/") + DEV_WECHAT_API_PATH
        wechat = WeChatAPIClient(
            http,
            redis,
            api_base=api_base,
            appid=settings.wechat_appid,
            secret=settings.wechat_secret,
            key_prefix=settings.redis_prefix,
        )
        gate = MessageGate(
            redis,
            prefix=settings.redis_prefix,
            conversation_ttl_s=settings.conversation_ttl_days * 24 * 3600,
        )
        conversation = ConversationService(
            gate=gate, jobs=jobs, desk=cases, sealer=protector, outbox=outbox
        )
        webhook = WebhookHandler(
            codec=WebhookCodec.from_settings(settings),
            service=conversation,
            outbox=outbox,
            max_body_bytes=settings.wechat_max_body_bytes,
            passive_deadline_s=settings.passive_reply_deadline_s,
        )
        background = BackgroundJobs(
            jobs=jobs,
            outbox=outbox,
            wechat=wechat,
            db=db,
            evidence=LocalBlobStore(settings.evidence_dir),
            max_media_bytes=settings.max_media_bytes,
            notice_template_id=settings.wechat_notice_template_id,
        )
        rooms = RoomService.from_settings(
            settings, db=db, data_key=data_key, protector=protector, outbox=outbox
        )
        placement = MediaPlacement(redis, prefix=settings.redis_prefix)
        node = media_node(settings) if settings.hosts_rooms else None
        hub = RoomHub(
            db=db,
            redis=redis,
            redis_prefix=settings.redis_prefix,
            rooms=rooms,
            media_config=media_config(settings),
            recordings_dir=settings.recordings_dir,
            jobs=jobs,
            placement=placement,
            node=node,
            empty_room_grace_s=settings.room_empty_grace_s,
        )
        if node is not None:
            heartbeat = NodeHeartbeat(placement, node, hosted=hub.hosted_rooms, on_lost=hub.lost)
            try:
                await heartbeat.start()
            except NodeIdInUse as error:
                raise ConfigurationError(
                    f"{error}, so this one does not start: give each media process its own "
                    "JIEFEN_MEDIA_NODE_ID (unset, it is <hostname>:<port>)"
                ) from error
            log.info("media node %s serves rooms at %s", node.node_id, node.signalling_url)
        finaliser = recording_finaliser(
            settings, db=db, redis=redis, seals=settings.embedded_worker
        )
        background.register(
            JOB_FINALISE_RECORDING,
            lambda job: finaliser.run_job(job, jobs),
            max_runtime_s=MAX_RUNTIME_S,
        )
        app[ROOM_SERVICE] = rooms
        app[ROOM_HUB] = hub
        app[FINALISER] = finaliser
        app[PLACEMENT] = placement
        app[SERVICES] = Services(
            settings=settings,
            db=db,
            redis=redis,
            jobs=jobs,
            cases=cases,
            webhook=webhook,
            background=background,
            rooms=rooms,
            hub=hub,
            finaliser=finaliser,
        )
        if settings.embedded_worker:
            worker = asyncio.create_task(background.run(stop), name="embedded-worker")
            sweeper = asyncio.create_task(
                sweep_unfinalised(db, jobs, stop), name="finalisation-sweep"
            )
        yield
    finally:
        # Replies still being computed go to the outbox first; then the worker stops.
        if SERVICES in app:
            await app[SERVICES].webhook.drain()
        if heartbeat is not None:
            await heartbeat.stop()  # this node's rooms are vacant at once, not after a TTL
        if ROOM_HUB in app:
            await app[ROOM_HUB].close()
        stop.set()
        if worker is not None:
            await asyncio.wait([worker], timeout=15)
        if sweeper is not None:
            await asyncio.wait([sweeper], timeout=5)
        await http.close()
        await redis.aclose()
        await db.dispose()


async def _hand_rooms_over(app: web.Application) -> None:
    """At shutdown, before open connections are waited for: every hosted room is handed over
    (its people told to reconnect, through placement, to another media process)."""
    if ROOM_HUB in app:
        await app[ROOM_HUB].close()


async def _index(request: web.Request) -> web.Response:
    return web.Response(
        text="解纷 Jiefen 在线调解服务正在运行。微信公众号消息入口：/wechat",
        content_type="text/plain",
    )


async def _health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"down: {type(error).__name__}"
    try:
        async with asyncio.timeout(2), services.db.connect() as connection:
            await connection.execute(sqlalchemy.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"down: {type(error).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return web.json_response(checks, status=200 if healthy else 503)


async def _webhook_verify(request: web.Request) -> web.Response:
    return await request.app[SERVICES].webhook.verify(request)


async def _webhook_receive(request: web.Request) -> web.Response:
    return await request.app[SERVICES].webhook.receive(request)
