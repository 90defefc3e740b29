"""The ``jiefen admin`` commands: organisations and routing, one case, call-back requests, dead
jobs, media nodes. Each takes the settings and the parsed arguments and returns the exit status
(``jiefen.cli`` wires them to the parser)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from config.settings import Settings


def admin_routing(settings: Settings, args: argparse.Namespace) -> int:
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


def admin_case(settings: Settings, args: argparse.Namespace) -> int:
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


def admin_callbacks(settings: Settings, args: argparse.Namespace) -> int:
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


def admin_dead_jobs(settings: Settings, args: argparse.Namespace) -> int:
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


def admin_media_nodes(settings: Settings, args: argparse.Namespace) -> int:
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
