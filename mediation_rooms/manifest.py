"""The signed documents of a recorded session, and their verification.

After a room ends, its directory holds the per-person files and ``timeline.jsonl``: the
evidence. They are sealed at once, before anything else is done with them: the manifest lists
every one with its size and SHA-256, together with the case, the room, the participants and
the timeline, and is signed with the platform's Ed25519 key. Once signed it is never rewritten.

    manifest.json     the manifest (UTF-8 JSON); these exact bytes are what is signed
    manifest.sig      the detached 64-byte Ed25519 signature of manifest.json

The court copy (``court_copy.py``) is rendered afterwards from the sealed files, which can take
hours, and may fail. When it is done, a second, small signed document records it: its name,
size and SHA-256, the SHA-256 of the ``manifest.json`` it was derived from, and how it was
rendered.

    court-copy.mp4    the court copy
    court-copy.json   its record (UTF-8 JSON, format ``jiefen-court-copy/1``), signed as above
    court-copy.sig    the detached signature of court-copy.json

Anyone with the platform's public key can check them without Jiefen, e.g. with OpenSSL 3::

    openssl pkeyutl -verify -pubin -inkey jiefen-signing.pub.pem -rawin \\
        -in manifest.json -sigfile manifest.sig
    sha256sum applicant-video-01.webm    # compare with the manifest's "files"
    sha256sum manifest.json court-copy.mp4    # compare with court-copy.json

``verify_recording`` does all of it and also reports files that neither document lists (added
later) and listed files that are missing or changed. Recordings sealed before this order
(format ``jiefen-recording-manifest/1``: signed after the render, the court copy listed among
the manifest's files) verify as they always did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jiefen.errors import SealBroken
from mediation_rooms.court_copy import RecordedFile
from state.signing_key import SigningKey, key_id_of, verify_signature

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
TIMELINE_NAME = "timeline.jsonl"
#: The evidence alone, sealed before the court copy is rendered.
MANIFEST_FORMAT = "jiefen-recording-manifest/2"
#: Sealed after the render, the court copy listed among the files (still verified).
LEGACY_MANIFEST_FORMAT = "jiefen-recording-manifest/1"
COURT_COPY_NAME = "court-copy.mp4"
COURT_COPY_RECORD_NAME = "court-copy.json"
COURT_COPY_SIGNATURE_NAME = "court-copy.sig"
COURT_COPY_FORMAT = "jiefen-court-copy/1"
#: Files in a recording directory that are not themselves listed in the manifest.
NOT_LISTED = frozenset(
    {MANIFEST_NAME, SIGNATURE_NAME, COURT_COPY_RECORD_NAME, COURT_COPY_SIGNATURE_NAME}
)


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


def evidence_files(directory: Path) -> list[Path]:
    """The files a manifest seals: :func:`listed_files` without the court copy (a copy derived
    from them, recorded in its own document)."""
    return [path for path in listed_files(directory) if path.name != COURT_COPY_NAME]


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
    return _write_signed(directory, MANIFEST_NAME, SIGNATURE_NAME, manifest, key)


def expects_court_copy(manifest: dict[str, Any]) -> bool:
    """Whether a manifest sealed before the render (the current format) is of a session that
    was recorded, so a court copy is to be rendered from it and recorded beside it."""
    return (
        manifest.get("format") == MANIFEST_FORMAT
        and manifest.get("live_at") is not None
        and any(entry.get("kind") for entry in manifest.get("files", []))
    )


def court_copy_status(directory: Path) -> str:
    """What a recording directory holds of its court copy, read from its files (no signature
    is checked: ``verify_recording`` does that): ``"rendered"`` (recorded beside the manifest,
    or listed in a legacy one), ``"missing"`` (a recorded session sealed without one yet:
    ``jiefen room finalise`` renders it), ``"none"`` (nothing was recorded) or ``"not sealed"``
    (no readable manifest)."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return "not sealed"
    if not isinstance(manifest, dict):
        return "not sealed"
    if (directory / COURT_COPY_RECORD_NAME).exists():
        return "rendered"
    if manifest.get("format") == LEGACY_MANIFEST_FORMAT and (directory / COURT_COPY_NAME).exists():
        return "rendered"
    return "missing" if expects_court_copy(manifest) else "none"


def court_copy_record(
    manifest_data: bytes, court_copy: Path, render: dict[str, Any], key: SigningKey
) -> dict[str, Any]:
    """The record of a court copy rendered from the signed manifest ``manifest_data``:
    the file's name, size and digest, the manifest's digest, ``render`` (how it was made)."""
    manifest = json.loads(manifest_data)
    digest, size = sha256_of(court_copy)
    return {
        "format": COURT_COPY_FORMAT,
        "case_no": manifest.get("case_no"),
        "room_id": manifest.get("room_id"),
        "session_no": manifest.get("session_no"),
        "file": {"name": court_copy.name, "bytes": size, "sha256": digest},
        "derived_from": {
            "name": MANIFEST_NAME,
            "sha256": hashlib.sha256(manifest_data).hexdigest(),
        },
        "render": render,
        "signed_at": datetime.now(UTC).isoformat(),
        "signing_key_id": key.key_id,
    }


def write_signed_court_copy_record(
    directory: Path, record: dict[str, Any], key: SigningKey
) -> bytes:
    """Sign and store ``court-copy.json`` and ``court-copy.sig`` as the manifest is stored."""
    return _write_signed(directory, COURT_COPY_RECORD_NAME, COURT_COPY_SIGNATURE_NAME, record, key)


def _write_signed(
    directory: Path, name: str, signature_name: str, document: dict[str, Any], key: SigningKey
) -> bytes:
    data = manifest_bytes(document)
    _replace(directory / signature_name, key.sign(data))
    _replace(directory / name, data)
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
    """The outcome of checking a recording directory against its signed documents."""

    manifest: dict[str, Any] | None = None
    #: The court copy's record, when there is one and its signature holds.
    court_copy: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems

    @property
    def court_copy_missing(self) -> bool:
        """Sealed, recorded, but no court copy recorded yet (not rendered, or it failed):
        not a problem of the evidence, something for an operator (``jiefen room finalise``)."""
        return (
            self.manifest is not None
            and self.court_copy is None
            and expects_court_copy(self.manifest)
        )


def sealed_manifest(directory: Path, public_key: Ed25519PublicKey, room_id: str) -> bytes:
    """The bytes of the directory's ``manifest.json`` when its signature holds for
    ``public_key`` and it is of ``room_id``; ``SealBroken`` (saying why) otherwise. Checks no
    file: it answers "is this recording sealed?", not "is it intact?"."""
    data = _signed_bytes(directory, MANIFEST_NAME, SIGNATURE_NAME, public_key)
    manifest = json.loads(data)
    if manifest.get("room_id") != room_id:
        raise SealBroken(f"the manifest is of room {manifest.get('room_id')}, not {room_id}")
    return data


def changed_files(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """What no longer matches the signed manifest: listed files missing or changed, and
    recorded media files it does not list (they would end up in a court copy)."""
    listed = {entry["name"]: entry for entry in manifest.get("files", [])}
    problems = [_file_problem(directory, entry) for entry in listed.values()]
    for path in listed_files(directory):
        if path.name not in listed and RecordedFile.parse(path) is not None:
            problems.append(f"{path.name}: not in the manifest")
    return [problem for problem in problems if problem]


def verify_recording(
    directory: Path, public_key: Ed25519PublicKey, room_id: str | None = None
) -> Verification:
    """Check the signature, that the manifest is of a known format and of ``room_id``
    (when given: a whole directory of another session must not pass for this one), every
    listed file's size and digest, the court copy's record when there is one (its signature,
    that it was derived from this very manifest, the court copy's digest), and for files that
    neither document lists."""
    result = Verification()
    try:
        data = _signed_bytes(directory, MANIFEST_NAME, SIGNATURE_NAME, public_key)
    except SealBroken as error:
        result.problems.append(str(error))
        return result
    manifest = json.loads(data)
    result.manifest = manifest
    if manifest.get("format") not in (MANIFEST_FORMAT, LEGACY_MANIFEST_FORMAT):
        result.problems.append(f"unknown manifest format {manifest.get('format')!r}")
    if room_id is not None and manifest.get("room_id") != room_id:
        result.problems.append(f"the manifest is of room {manifest.get('room_id')}, not {room_id}")
    if manifest.get("signing_key_id") != key_id_of(public_key):
        result.problems.append("the manifest names a different signing key")
    listed = {entry["name"]: entry for entry in manifest.get("files", [])}
    for entry in listed.values():
        if problem := _file_problem(directory, entry):
            result.problems.append(problem)
        else:
            result.checked_files += 1
    recorded = set(listed)
    if any((directory / name).exists() for name in NOT_LISTED - {MANIFEST_NAME, SIGNATURE_NAME}):
        recorded |= _verify_court_copy(directory, data, manifest, public_key, result)
    for path in listed_files(directory):
        if path.name not in recorded:
            result.problems.append(f"{path.name}: not in the manifest")
    return result


def _verify_court_copy(
    directory: Path,
    manifest_data: bytes,
    manifest: dict[str, Any],
    public_key: Ed25519PublicKey,
    result: Verification,
) -> set[str]:
    """Check the court copy's record into ``result``; the name of the file it accounts for."""
    try:
        data = _signed_bytes(
            directory, COURT_COPY_RECORD_NAME, COURT_COPY_SIGNATURE_NAME, public_key
        )
    except SealBroken as error:
        result.problems.append(f"{COURT_COPY_RECORD_NAME}: {error}")
        return set()
    record = json.loads(data)
    result.court_copy = record
    problems = []
    if record.get("format") != COURT_COPY_FORMAT:
        problems.append(f"unknown format {record.get('format')!r}")
    if record.get("room_id") != manifest.get("room_id"):
        problems.append(f"it is of room {record.get('room_id')}, not {manifest.get('room_id')}")
    if record.get("signing_key_id") != key_id_of(public_key):
        problems.append("it names a different signing key")
    derived_from = record.get("derived_from") or {}
    if derived_from.get("sha256") != hashlib.sha256(manifest_data).hexdigest():
        problems.append(f"it was derived from another {MANIFEST_NAME} than this one")
    result.problems += [f"{COURT_COPY_RECORD_NAME}: {problem}" for problem in problems]
    entry = record.get("file") or {}
    name = entry.get("name")
    if name != COURT_COPY_NAME:  # never a path, an evidence file or a signed document
        result.problems.append(f"{COURT_COPY_RECORD_NAME}: names no court copy file")
        return set()
    if problem := _file_problem(directory, entry):
        result.problems.append(problem)
    else:
        result.checked_files += 1
    return {name}


def _signed_bytes(
    directory: Path, name: str, signature_name: str, public_key: Ed25519PublicKey
) -> bytes:
    """The document's bytes when its detached signature holds, else ``SealBroken``."""
    try:
        data = (directory / name).read_bytes()
        signature = (directory / signature_name).read_bytes()
    except OSError as error:
        what = "no signed manifest" if name == MANIFEST_NAME else "unreadable"
        raise SealBroken(f"{what}: {error.strerror}: {error.filename}") from error
    if not verify_signature(public_key, signature, data):
        raise SealBroken("the signature does not match (altered, or signed by another key)")
    return data


def _file_problem(directory: Path, entry: dict[str, Any]) -> str | None:
    """Why the file an entry lists does not match it (missing, changed), or ``None``."""
    path = directory / entry["name"]
    if not path.is_file():
        return f"{entry['name']}: missing"
    digest, size = sha256_of(path)
    if size != entry["bytes"] or digest != entry["sha256"]:
        return f"{entry['name']}: changed since it was signed"
    return None
