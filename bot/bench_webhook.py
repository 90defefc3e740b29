"""``jiefen bench webhook``: simulated residents file disputes through the real webhook.

Starts ``--processes`` server processes (``jiefen serve --role all``) backed by the real Redis and
PostgreSQL (a fresh database, dropped afterwards) and a fake WeChat API, unless ``--url`` names a
running server. Then ``--users`` residents, ``--concurrency`` at a time, each go through the whole
intake (safe mode by default: signed and AES-encrypted, as WeChat sends them), one message after
the previous reply, as a person on a phone does. Reports messages/s, latency percentiles, the
servers' CPU time per message (from ``/proc``), and how many intakes ended with a case number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import asyncpg

from bot.fake_wechat_api import FakeWeChatAPI, start_fake_wechat_api
from bot.wechat_simulator import CryptoMode, Reply, WeChatSimulator
from config.settings import Settings
from jiefen.host_speed import calibration_ms

REDIS_URL = os.environ.get("JIEFEN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_ADMIN_URL = os.environ.get(
    "JIEFEN_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def intake_script(index: int) -> list[str]:
    """What resident ``index`` types, message by message, from start to confirmation."""
    return [
        "我要调解",
        "同意",
        "1",
        "张三丰",
        f"138{index % 100_000_000:08d}",
        "53010219900307608x",  # lower-case x, as people type it
        "李四",
        "不知道",
        "昆明市官渡区关上街道",
        "楼上邻居每天深夜装修噪音很大，多次沟通没有结果，影响老人休息。",
        "停止夜间施工并赔礼道歉",
        "三千五百元",
        "完成",
        "1",
        "普通话",
        "确认",
    ]


@dataclass
class Figures:
    processes: int
    users: int
    concurrency: int
    mode: str
    messages: int
    failures: int
    cases_created: int
    wall_s: float
    messages_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    #: The last message (「确认」) stores the case in PostgreSQL: reported on its own.
    confirm_p50_ms: float
    confirm_p99_ms: float
    server_cpu_s: float | None
    server_cpu_us_per_message: float | None
    #: This machine's speed (jiefen.host_speed): CPU figures compare in proportion to it.
    host_calibration_ms: float


def run_benchmark(settings: Settings, args: argparse.Namespace) -> int:
    figures = asyncio.run(_run(settings, args))
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
    else:
        _print_table(figures)
    return 0 if figures.failures == 0 else 1


async def _run(settings: Settings, args: argparse.Namespace) -> Figures:
    if args.url:
        return await _drive(settings, args, [args.url.rstrip("/")], pids=[])
    database = f"jiefen_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DATABASE_ADMIN_URL, timeout=5)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    prefix = f"jiefen-bench:{uuid.uuid4().hex[:8]}:"
    _, fake_url, fake_runner = await start_fake_wechat_api(
        FakeWeChatAPI(appid=settings.wechat_appid, secret=settings.wechat_secret)
    )
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="jiefen-bench-") as data_dir:
            env = dict(
                os.environ,
                JIEFEN_DATABASE_URL=DATABASE_ADMIN_URL.rsplit("/", 1)[0].replace(
                    "postgresql://", "postgresql+asyncpg://", 1
                )
                + f"/{database}",
                JIEFEN_REDIS_URL=REDIS_URL,
                JIEFEN_REDIS_PREFIX=prefix,
                JIEFEN_DATA_DIR=data_dir,
                JIEFEN_WECHAT_API_BASE=fake_url,
                JIEFEN_LOG_LEVEL="WARNING",
            )
            urls: list[str] = []
            log = Path(data_dir) / "server.log"
            for index in range(args.processes):
                port = free_port()
                urls.append(f"http://127.0.0.1:{port}")
                if index == 0:
                    # The first server migrates the database before the others start.
                    servers.append(_start_server(env, port, log))
                    await _wait_healthy(urls[0], servers[0], log)
                else:
                    servers.append(_start_server(env, port, log))
            for url, server in zip(urls, servers, strict=True):
                await _wait_healthy(url, server, log)
            return await _drive(settings, args, urls, pids=[s.pid for s in servers])
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        await fake_runner.cleanup()
        await _cleanup(database, prefix)


async def _drive(
    settings: Settings, args: argparse.Namespace, urls: list[str], *, pids: list[int]
) -> Figures:
    calibration = calibration_ms()  # before the load, which would slow it
    simulator = WeChatSimulator(
        settings.wechat_token, settings.wechat_appid, settings.wechat_aes_key, CryptoMode(args.mode)
    )
    latencies: list[float] = []
    confirm_latencies: list[float] = []
    failures = 0
    cases = 0
    done = 0
    semaphore = asyncio.Semaphore(args.concurrency)
    run_id = uuid.uuid4().hex[:8]

    async def resident(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal failures, cases, done
        url = urls[index % len(urls)] + "/wechat"
        openid = f"o_bench_{run_id}_{index:06d}"
        async with semaphore:
            last = ""
            script = intake_script(index)
            for step, text in enumerate(script):
                push = simulator.text(openid, text)
                started = time.perf_counter()
                delivery = await simulator.deliver(session, url, push, retries=1)
                latency = time.perf_counter() - started
                latencies.append(latency)
                if step == len(script) - 1:
                    confirm_latencies.append(latency)
                if delivery.status != 200 or not isinstance(delivery.reply, Reply):
                    failures += 1
                    break
                last = delivery.reply.content or ""
            if "JF" in last:
                cases += 1
            done += 1
            _progress(done, args.users)

    connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before = _cpu_seconds(pids)
        started = time.perf_counter()
        await asyncio.gather(*(resident(index, session) for index in range(args.users)))
        wall = time.perf_counter() - started
        cpu_after = _cpu_seconds(pids)
    print(file=sys.stderr)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    ordered = sorted(latencies) or [0.0]
    confirms = sorted(confirm_latencies) or [0.0]
    messages = len(latencies)
    return Figures(
        processes=len(urls),
        users=args.users,
        concurrency=args.concurrency,
        mode=args.mode,
        messages=messages,
        failures=failures,
        cases_created=cases,
        wall_s=round(wall, 3),
        messages_per_s=round(messages / wall, 1) if wall else 0.0,
        latency_p50_ms=round(_percentile(ordered, 50) * 1000, 2),
        latency_p95_ms=round(_percentile(ordered, 95) * 1000, 2),
        latency_p99_ms=round(_percentile(ordered, 99) * 1000, 2),
        latency_max_ms=round(ordered[-1] * 1000, 2),
        confirm_p50_ms=round(_percentile(confirms, 50) * 1000, 2),
        confirm_p99_ms=round(_percentile(confirms, 99) * 1000, 2),
        server_cpu_s=None if cpu is None else round(cpu, 3),
        server_cpu_us_per_message=(
            None if cpu is None or not messages else round(cpu / messages * 1e6, 1)
        ),
        host_calibration_ms=calibration,
    )


def _percentile(ordered: list[float], percent: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(percent) - 1]


def _progress(done: int, total: int) -> None:
    """Redraw the progress bar on standard error when the whole percentage changes."""
    if total and done != total and done * 100 // total == (done - 1) * 100 // total:
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} residents")
    sys.stderr.flush()


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of the given processes, from /proc (None where unavailable)."""
    if not pids:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "jiefen.cli", "serve", "--port", str(port), "--role", "all"]
    with open(log, "ab") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


class ServerNotReady(RuntimeError):
    """A server started for a benchmark or a test exited, or never answered ``/healthz``."""


async def wait_until_healthy(url: str, exited: Callable[[], bool], *, timeout_s: float) -> None:
    """Poll ``url/healthz`` until it answers 200; ``ServerNotReady`` when ``exited()`` turns
    true first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if exited():
                raise ServerNotReady(f"the server at {url} exited early")
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise ServerNotReady(f"the server at {url} did not become healthy")


async def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    try:
        await wait_until_healthy(url, lambda: server.poll() is not None, timeout_s=30)
    except ServerNotReady as error:
        raise ServerNotReady(f"{error}:\n{_tail(log)}") from None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _cleanup(database: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    redis = aioredis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    admin = await asyncpg.connect(DATABASE_ADMIN_URL, timeout=5)
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


def _print_table(figures: Figures) -> None:
    rows = [
        ("server processes", figures.processes),
        ("residents / concurrency", f"{figures.users} / {figures.concurrency}"),
        ("crypto mode", figures.mode),
        ("messages", figures.messages),
        ("failures", figures.failures),
        ("cases created", figures.cases_created),
        ("wall time", f"{figures.wall_s} s"),
        ("throughput", f"{figures.messages_per_s} messages/s"),
        (
            "latency p50 / p95 / p99 / max",
            f"{figures.latency_p50_ms} / {figures.latency_p95_ms} / "
            f"{figures.latency_p99_ms} / {figures.latency_max_ms} ms",
        ),
        ("「确认」 latency p50 / p99", f"{figures.confirm_p50_ms} / {figures.confirm_p99_ms} ms"),
        ("server CPU", f"{figures.server_cpu_s} s"),
        ("server CPU per message", f"{figures.server_cpu_us_per_message} µs"),
        ("host calibration", f"{figures.host_calibration_ms} ms (lower is faster)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
