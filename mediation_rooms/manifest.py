"""The signed manifest of a recorded session, and its verification.

After a room ends, its directory holds the per-person files, ``timeline.jsonl`` and the court
copy. The manifest lists every one of them with its size and SHA-256, together with the case,
the room, the participants and the timeline, and is signed with the platform's Ed25519 key:

    manifest.json   the manifest (UTF-8 JSON); these exact bytes are what is signed
    manifest.sig    the detached 64-byte Ed25519 signature of manifest.json

Anyone with the platform's public key can check it without Jiefen, e.g. with OpenSSL 3::

    openssl pkeyutl -verify -pubin -inkey jiefen-signing.pub.pem -rawin \\
        -in manifest.json -sigfile manifest.sig
    sha256sum applicant-video-01.webm    # compare with the manifest's "files"

``verify_recording`` does both checks and also reports recording files the manifest does not
list (added later) and listed files that are missing or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation_rooms.court_copy import RecordedFile
from state.signing_key import SigningKey, key_id_of, verify_signature

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
TIMELINE_NAME = "timeline.jsonl"
MANIFEST_FORMAT = "jiefen-recording-manifest/1"
#: Files in a recording directory that are not themselves listed in the manifest.
NOT_LISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


def sha256_of(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The timeline's events; a line torn by a crash (the last one) is skipped."""
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.warning("timeline %s: line %d is not JSON (torn by a crash?)", path, number)
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@dataclass(frozen=True, slots=True)
class MediaSummary:
    """What a recorded file holds, read by demuxing it (nothing decoded)."""

    codec: str
    frames: int
    first_ms: int | None
    last_ms: int | None


def summarise_media(path: Path) -> MediaSummary:
    """Codec, packet count and first/last timestamp (room ms) of one recorded file. A file cut
    short by a crash is read up to its last whole packet."""
    frames, first, last, codec = 0, None, None, "unknown"
    try:
        with av.open(str(path)) as container:
            if not container.streams:
                return MediaSummary(codec, 0, None, None)
            stream = container.streams[0]
            codec = stream.codec_context.name
            time_base = stream.time_base
            try:
                for packet in container.demux(stream):
                    if packet.pts is None or time_base is None:
                        continue
                    ms = int(packet.pts * time_base * 1000)
                    frames += 1
                    first = ms if first is None else min(first, ms)
                    last = ms if last is None else max(last, ms)
            except Exception as error:  # a damaged file can fail in many ways inside PyAV
                log.warning("%s: damaged after %d packets: %s", path, frames, error)
    except Exception as error:
        log.warning("%s: unreadable: %s", path, error)
    return MediaSummary(codec, frames, first, last)


def listed_files(directory: Path) -> list[Path]:
    """Every file of the recording directory that belongs in its manifest, by name."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file()
        and path.name not in NOT_LISTED
        and not path.name.startswith(".")
        and not path.name.endswith(".partial")
    )


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest entry of one file: name, size, digest, and what a media file holds."""
    digest, size = sha256_of(path)
    entry: dict[str, Any] = {"name": path.name, "bytes": size, "sha256": digest}
    recorded = RecordedFile.parse(path)
    if recorded is not None:
        media = summarise_media(path)
        entry |= {
            "seat": recorded.seat,
            "kind": recorded.kind,
            "part": recorded.part,
            "codec": media.codec,
            "frames": media.frames,
            "first_ms": media.first_ms,
            "last_ms": media.last_ms,
        }
    return entry


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as it is stored and signed: UTF-8 JSON, keys sorted, indented."""
    return (json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode()


def write_signed_manifest(directory: Path, manifest: dict[str, Any], key: SigningKey) -> bytes:
    """Sign ``manifest`` with ``key`` and store both files atomically; returns the signed bytes.

    The signature is put in place before the manifest, so a ``manifest.json`` present on disk
    always has its signature beside it.
    """
    data = manifest_bytes(manifest)
    _replace(directory / SIGNATURE_NAME, key.sign(data))
    _replace(directory / MANIFEST_NAME, data)
    return data


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


@dataclass
class Verification:
    """The outcome of checking a recording directory against its signed manifest."""

    manifest: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems


def verify_recording(
    directory: Path, public_key: Ed25519PublicKey, room_id: str | None = None
) -> Verification:
    """Check the signature, that the manifest is of the expected format and of ``room_id``
    (when given: a whole directory of another session must not pass for this one), every
    listed file's size and digest, and for files it does not list."""
    result = Verification()
    try:
        data = (directory / MANIFEST_NAME).read_bytes()
        signature = (directory / SIGNATURE_NAME).read_bytes()
    except OSError as error:
        result.problems.append(f"no signed manifest: {error.strerror}: {error.filename}")
        return result
    if not verify_signature(public_key, signature, data):
        result.problems.append("the signature does not match (altered, or signed by another key)")
        return result
    manifest = json.loads(data)
    result.manifest = manifest
    if manifest.get("format") != MANIFEST_FORMAT:
        result.problems.append(f"unknown manifest format {manifest.get('format')!r}")
    if room_id is not None and manifest.get("room_id") != room_id:
        result.problems.append(f"the manifest is of room {manifest.get('room_id')}, not {room_id}")
    if manifest.get("signing_key_id") != key_id_of(public_key):
        result.problems.append("the manifest names a different signing key")
    listed = {entry["name"]: entry for entry in manifest.get("files", [])}
    for name, entry in listed.items():
        path = directory / name
        if not path.is_file():
            result.problems.append(f"{name}: missing")
            continue
        digest, size = sha256_of(path)
        result.checked_files += 1
        if size != entry["bytes"] or digest != entry["sha256"]:
            result.problems.append(f"{name}: changed since it was signed")
    for path in listed_files(directory):
        if path.name not in listed:
            result.problems.append(f"{path.name}: not in the manifest")
    return result
