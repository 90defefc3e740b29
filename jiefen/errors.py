"""The one exception tree of Jiefen.

::

    JiefenError
     ├── InvalidInput            the user's mistake: re-prompt, never log as an error
     │    └── (flows validators raise it with a Chinese ``message`` to show)
     ├── RequestRejected         a request that fails our checks (signature, size, replay)
     │    ├── BadSignature
     │    ├── StaleRequest
     │    ├── PayloadTooLarge
     │    └── MalformedMessage
     ├── ConfigurationError      settings or config files that do not make sense
     │    └── NodeIdInUse        (mediation_rooms.placement) a media node id another process holds
     ├── InvalidTransition       a lifecycle asked to move where its rules forbid
     │    └── RoomStateError     (mediation_rooms.room) a room's state, in memory or stored
     ├── SealBroken              a signed document (a recording's manifest, its court copy
     │                           record) does not verify: altered, of another room or key
     ├── PermanentJobError       a background job that can never succeed: dead-lettered at once
     ├── RoomsAPIRefused         (mediation_rooms.client_rooms_api) the rooms API said no
     └── UpstreamError           something outside us failed; may carry ``retry_after``
          ├── WeChatAPIError     WeChat answered with an errcode (``errcode``, ``errmsg``)
          ├── StorageUnavailable the database or the file store cannot be reached
          ├── LockTimeout        a Redis lock or turn could not be had in time
          ├── NoMediaNode        no media process can host a room right now
          └── RoomsAPIUnreachable (mediation_rooms.client_rooms_api) no answer from the rooms API

A few subclasses live beside the one module that raises and catches them (``RenderFailed``,
``LeaseLost`` and ``InvalidReply``, all directly under ``JiefenError``). Catch broad exceptions
only at the top of a task or a request, and log them there.
This module is pure: the pure packages (``flows``, ``cases``) may import it.
"""

from __future__ import annotations


class JiefenError(Exception):
    """Root of every error Jiefen raises on purpose."""


class InvalidInput(JiefenError):
    """The user gave an answer we cannot accept; ``message`` says why, in Chinese, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestRejected(JiefenError):
    """An inbound request failed a check; ``status`` is the HTTP status to answer with."""

    status: int = 400


class BadSignature(RequestRejected):
    status = 403


class StaleRequest(RequestRejected):
    status = 403


class PayloadTooLarge(RequestRejected):
    status = 413


class MalformedMessage(RequestRejected):
    status = 400


class ConfigurationError(JiefenError):
    """Settings or a config file that cannot work."""


class InvalidTransition(JiefenError):
    """A lifecycle was asked for a move its rules forbid; names both states."""

    def __init__(self, kind: str, old: object, new: object) -> None:
        super().__init__(f"{kind}: transition {old} -> {new} is not allowed")
        self.kind = kind
        self.old = old
        self.new = new


class UpstreamError(JiefenError):
    """A service outside this process failed. ``retry_after`` (seconds) when known."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WeChatAPIError(UpstreamError):
    """WeChat's API answered with a non-zero ``errcode``."""

    def __init__(self, errcode: int, errmsg: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"WeChat API error {errcode}: {errmsg}", retry_after=retry_after)
        self.errcode = errcode
        self.errmsg = errmsg


class StorageUnavailable(UpstreamError):
    """The database or a file store could not be reached or refused the write."""


class LockTimeout(UpstreamError):
    """A lock or a per-user turn could not be had in time."""


class NoMediaNode(UpstreamError):
    """No media process is alive to host a room (or, for a while after Redis lost its data,
    none may take a room without a claim)."""


class SealBroken(JiefenError):
    """A signed document that does not verify (altered, of another room, another key)."""


class PermanentJobError(JiefenError):
    """A background job that can never succeed (its subject is gone or in the wrong state):
    it goes to the dead-letter list at once instead of being retried."""
