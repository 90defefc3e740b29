"""Running the court copy renderer (``court_copy.py``) as a child process, for the job.

The job renders from the sealed manifest alone (:func:`court_copy_spec`: its clock, files and
timeline), in a child process at low priority with a time limit (:func:`render_in_child`),
and records how the copy was made (:func:`render_facts`) in the court copy's signed record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from jiefen.errors import JiefenError
from mediation_rooms.court_copy import CourtCopySpec
from mediation_rooms.manifest import COURT_COPY_NAME, MediaSummary

#: The court copy renderer, run as a child process with the spec file's path.
RENDERER = (sys.executable, "-m", "mediation_rooms.court_copy")


class RenderFailed(JiefenError):
    """The court copy could not be rendered (carries the renderer's last error output), or
    its inputs are not there yet: worth retrying, unless ``permanent`` (it would fail the same
    way again)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def court_copy_spec(
    manifest: dict[str, Any], directory: Path, *, fps: int, font_file: Path | None
) -> CourtCopySpec:
    """What to render, from the sealed manifest alone (its clock, files and timeline)."""
    media = [
        MediaSummary(
            str(entry.get("codec")),
            int(entry.get("frames") or 0),
            entry.get("first_ms"),
            entry.get("last_ms"),
        )
        for entry in manifest["files"]
        if entry.get("kind")
    ]
    return CourtCopySpec(
        directory=directory,
        output=directory / COURT_COPY_NAME,
        case_no=str(manifest["case_no"]),
        live_since=datetime.fromisoformat(manifest["live_at"]).timestamp(),
        duration_ms=_duration_ms(media, manifest.get("timeline", [])),
        fps=fps,
        font_file=font_file,
    )


def render_facts(spec: CourtCopySpec, done: dict[str, Any]) -> dict[str, Any]:
    """How the court copy was made, for its record: the render's settings and what the file
    it wrote holds (read from its header)."""
    facts: dict[str, Any] = {
        "renderer": "mediation_rooms.court_copy",
        "live_at": datetime.fromtimestamp(spec.live_since, UTC).isoformat(),
        "duration_ms": spec.duration_ms,
        "fps": spec.fps,
        # None: the first Chinese system font found, else a built-in Latin one.
        "font_file": spec.font_file.name if spec.font_file is not None else None,
        "video_frames": done.get("video_frames"),
    }
    with av.open(str(spec.output)) as container:
        if container.streams.video:
            video = container.streams.video[0].codec_context
            facts["video"] = {"codec": video.name, "width": video.width, "height": video.height}
        if container.streams.audio:
            audio = container.streams.audio[0].codec_context
            facts["audio"] = {
                "codec": audio.name,
                "sample_rate": audio.sample_rate,
                "layout": audio.layout.name,
            }
    return facts


async def render_in_child(
    spec: CourtCopySpec,
    progress: Callable[[str, float], Awaitable[None]],
    *,
    command: tuple[str, ...] = RENDERER,
    limit_s: float,
) -> dict[str, Any]:
    """Render ``spec`` by running ``command`` with a spec file, relaying its progress as
    ``progress("rendering", fraction)``; the renderer's closing message (``{"done": …}``).

    ``RenderFailed`` when it exits with an error (worth another try) or runs past ``limit_s``
    (``permanent``: it would run as long again). Cancelled, it kills the child first."""
    descriptor, spec_path = tempfile.mkstemp(prefix="court-copy-", suffix=".json")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(spec.to_json())
    child = await asyncio.create_subprocess_exec(
        *command,
        spec_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    errors = asyncio.create_task(_read_tail(child.stderr))
    done: dict[str, Any] = {}
    try:
        assert child.stdout is not None
        async with asyncio.timeout(limit_s):
            async for line in child.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(message, dict):
                    continue
                if "progress" in message:
                    await progress("rendering", float(message["progress"]))
                elif "done" in message:
                    done = message
            returncode = await child.wait()
    except TimeoutError as error:
        # A render this long would run as long again: retrying it only delays the archive.
        raise RenderFailed(
            f"the court copy render ran past its limit of {limit_s:g} s",
            permanent=True,
        ) from error
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        # A killed child leaves its partial output behind (it names it after its own pid).
        with contextlib.suppress(FileNotFoundError):
            spec.output.with_name(f".{spec.output.name}.{child.pid}.partial").unlink()
        tail = await errors
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec_path)
    if returncode != 0:
        raise RenderFailed(f"court copy renderer exited with {returncode}: {tail[-2000:]}")
    return done


async def _read_tail(stream: asyncio.StreamReader | None, keep: int = 8192) -> str:
    """Everything the stream says, keeping only the last ``keep`` characters."""
    if stream is None:
        return ""
    tail = ""
    with contextlib.suppress(Exception):
        async for line in stream:
            tail = (tail + line.decode(errors="replace"))[-keep:]
    return tail


def _duration_ms(media: list[MediaSummary], timeline: list[dict[str, Any]]) -> int:
    """From room time 0 to the last frame of any file or the end of the session."""
    last_frame = max((summary.last_ms or 0 for summary in media), default=0)
    ended = max(
        (int(e["t_ms"]) for e in timeline if e.get("event") == "ended" and "t_ms" in e),
        default=0,
    )
    return max(last_frame, ended) + 40
