"""The one settings object of Jiefen (pydantic-settings, environment prefix ``JIEFEN_``).

Read once at start-up (``Settings()``) and passed explicitly; nothing deeper in the code reads
the environment. Every default is the embedded mode: SQLite under ``./var``, an in-process Redis
stand-in when ``JIEFEN_REDIS_URL`` is unset, local disk for evidence and recordings, and a
development WeChat account that the bundled simulator and fake WeChat API server speak to.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The development WeChat account used by `jiefen serve` and `jiefen chat` out of the box.
DEV_WECHAT_TOKEN = "jiefen-dev-token"
DEV_WECHAT_APPID = "wxjiefendev0000001"
DEV_WECHAT_SECRET = "jiefen-dev-secret"
DEV_WECHAT_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeChat's

WECHAT_API_BASE = "https://api.weixin.qq.com"

#: A ``turn:`` or ``turns:`` URL as WebRTC takes it (RFC 7065; aiortc reads the same form):
#: ``turn:turn.example.cn``, ``turn:203.0.113.7:3478?transport=tcp``,
#: ``turns:turn.example.cn:5349?transport=tcp``.
TURN_URL = re.compile(r"turns?:[^\s?:/]+(:[0-9]{1,5})?(\?transport=(udp|tcp))?")


class IceServer(BaseModel):
    """One STUN or TURN server, as in WebRTC's ``RTCIceServer``."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    """All configuration. Field names map to ``JIEFEN_<NAME>`` environment variables."""

    #: ``hide_input_in_errors``: a setting that does not validate is named, never echoed with
    #: the rest of the input (pydantic would print every setting given, secrets included).
    model_config = SettingsConfigDict(
        env_prefix="JIEFEN_", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = 8080
    #: The URL people reach us by (for links in messages); defaults to http://host:port.
    public_url: str | None = None

    data_dir: Path = Path("var")
    #: SQLAlchemy async URL; default is an SQLite file in ``data_dir``.
    database_url: str | None = None
    #: ``redis://`` URL; unset means an in-process stand-in (fakeredis), for one process only.
    redis_url: str | None = None
    #: Prefix for every Redis key, so that several deployments (or tests) can share one server.
    redis_prefix: str = "jiefen:"

    wechat_token: str = DEV_WECHAT_TOKEN
    wechat_appid: str = DEV_WECHAT_APPID
    wechat_secret: str = DEV_WECHAT_SECRET
    #: 43-character EncodingAESKey; empty means plaintext mode only.
    wechat_aes_key: str = DEV_WECHAT_AES_KEY
    #: The message encryption mode chosen in WeChat's admin page (明文 / 兼容 / 安全模式).
    #: ``safe`` refuses plaintext pushes; ``compat`` accepts both; ``plain`` needs no AES key.
    wechat_crypto_mode: Literal["plain", "compat", "safe"] = "safe"
    wechat_api_base: str = WECHAT_API_BASE
    #: Template used to reach a resident outside the 48 h customer-service window (optional).
    wechat_notice_template_id: str | None = None

    #: Pushes whose timestamp is further than this from now are refused (seconds).
    wechat_timestamp_tolerance_s: int = 300
    #: Webhook bodies above this size get 413.
    wechat_max_body_bytes: int = 64 * 1024
    #: Reply passively if the answer is ready within this time, else push it (seconds).
    passive_reply_deadline_s: float = 4.0
    #: A half-finished intake is kept this long for the resident to resume.
    conversation_ttl_days: int = 7
    #: Largest media file fetched from WeChat as evidence.
    max_media_bytes: int = 20 * 1024 * 1024

    #: Base64 32-byte key that encrypts ID numbers; unset means a key file in ``data_dir``.
    data_key: str | None = None
    #: TOML file of organisations and routing rules; unset means the bundled example.
    routing_file: Path | None = None
    #: Extra non-working days (YYYY-MM-DD) for deadline arithmetic, e.g. public holidays.
    holidays: list[str] = Field(default_factory=list)

    #: STUN/TURN servers for the video rooms, as WebRTC's ``iceServers`` JSON list, e.g.
    #: ``[{"urls": "turn:turn.example.cn:3478", "username": "u", "credential": "p"}]``.
    #: Empty (the default) is right on a LAN and on loopback; the public internet needs TURN,
    #: best with :attr:`turn_urls`: a ``username``/``credential`` given here goes to everyone
    #: who joins, and works for them for as long as it is configured.
    ice_servers: list[IceServer] = Field(default_factory=list)
    #: TURN servers that check time-limited credentials (coturn ``use-auth-secret``), e.g.
    #: ``["turn:turn.example.cn:3478", "turns:turn.example.cn:5349?transport=tcp"]``. Each join
    #: (and the media server's own connection for it) gets credentials of its own, minted with
    #: :attr:`turn_secret` and valid :attr:`turn_ttl_s`; set both or neither.
    turn_urls: list[str] = Field(default_factory=list)
    #: The secret shared with the TURN server (coturn ``static-auth-secret``); never shown.
    turn_secret: SecretStr | None = None
    #: How long minted TURN credentials are valid (seconds): longer than a session, since the
    #: TURN server refuses to refresh an allocation once they expire.
    turn_ttl_s: int = Field(default=6 * 3600, ge=60)
    #: The one video codec of every new room: ``VP8`` (default) or ``H264``.
    video_codec: Literal["VP8", "H264"] = "VP8"
    #: Highest video bitrate a participant is asked to send (REMB), bits per second.
    video_bitrate_cap_bps: int = 1_000_000
    #: A join link stays valid this long after the session's scheduled time (hours).
    join_link_valid_hours: int = 24
    #: Bearer token for the rooms HTTP API (``/api/rooms``); unset disables that API.
    admin_api_token: str | None = None
    #: HTTPS for ``jiefen serve`` (cameras need a secure context off localhost): a PEM
    #: certificate and key, or ``tls_self_signed`` for a throw-away one (trying it from a phone).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_self_signed: bool = False
    #: PEM file (mode 0600 or stricter) of the platform's Ed25519 private key that signs
    #: recording manifests. Required outside the embedded mode (see :attr:`embedded`): every
    #: host must sign with the one key whose public half the courts hold. Unset in the embedded
    #: mode means ``data_dir/keys/signing-ed25519.pem``, created on first use. Courts verify
    #: with its public half (``jiefen room signing-key``).
    signing_key_file: Path | None = None
    #: Font for the court copy's overlay; unset tries the usual Chinese fonts, then a built-in
    #: Latin one (seat labels then appear in English).
    court_copy_font_file: Path | None = None
    #: Frame rate of the court copy (the per-person recordings keep their own).
    court_copy_fps: int = Field(default=25, ge=5, le=30)

    #: What ``jiefen serve`` runs: ``all`` (everything in one process, the embedded default),
    #: ``web`` (webhook, join page, APIs; places rooms but hosts none) or ``media`` (hosts
    #: rooms: signalling and media; one process per core). ``--role`` sets it; ``jiefen worker``
    #: runs as ``worker`` (background jobs, no HTTP).
    role: Literal["all", "web", "media", "worker"] = "all"
    #: Where browsers reach *this* process's room signalling (``https://media1.example.cn``, or a
    #: path a proxy routes to it); default: the join page's own origin in ``all``,
    #: http(s)://host:port else.
    media_public_url: str | None = None
    #: This media process's name among the others; default ``<hostname>:<port>``.
    media_node_id: str | None = None
    #: Rooms this media process takes before emptier ones are preferred (it still takes more
    #: when every process is that full: nobody is refused a mediation for load).
    media_node_capacity: int = Field(default=4, ge=1)

    #: A hosted room nobody has been in for this long is let go by its media process (its
    #: files finished, its place freed); the next join picks it up again (seconds).
    room_empty_grace_s: float = Field(default=120.0, gt=0)

    #: Run background jobs (outbox, media fetch) inside ``jiefen serve``.
    embedded_worker: bool = True
    #: ``auto`` runs on uvloop where it is installed, else on asyncio's own loop.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    log_level: str = "INFO"

    @field_validator("wechat_aes_key")
    @classmethod
    def _aes_key_length(cls, value: str) -> str:
        if value and len(value) != 43:
            raise ValueError(
                "JIEFEN_WECHAT_AES_KEY must be 43 characters (WeChat's EncodingAESKey)"
            )
        return value

    @model_validator(mode="after")
    def _no_dev_secrets_on_a_real_account(self) -> Self:
        # The development token and AES key are public: a real account using them could be
        # sent forged pushes by anyone.
        if self.wechat_appid != DEV_WECHAT_APPID and (
            self.wechat_token == DEV_WECHAT_TOKEN or self.wechat_aes_key == DEV_WECHAT_AES_KEY
        ):
            raise ValueError(
                "a real WeChat account needs its own JIEFEN_WECHAT_TOKEN and "
                "JIEFEN_WECHAT_AES_KEY (the development ones are public)"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("JIEFEN_TLS_CERT_FILE and JIEFEN_TLS_KEY_FILE go together")
        if bool(self.turn_urls) != bool(self.turn_secret and self.turn_secret.get_secret_value()):
            raise ValueError("JIEFEN_TURN_URLS and JIEFEN_TURN_SECRET go together")
        for url in self.turn_urls:
            if not TURN_URL.fullmatch(url):
                raise ValueError(
                    f"JIEFEN_TURN_URLS: {url!r} is not a TURN URL "
                    "(turn:host[:port][?transport=udp|tcp] or turns:host[:port]?transport=tcp)"
                )
        if self.wechat_crypto_mode != "plain" and not self.wechat_aes_key:
            raise ValueError("JIEFEN_WECHAT_AES_KEY is needed in compat and safe mode")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'jiefen.db').as_posix()}"

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    @property
    def serves_https(self) -> bool:
        return self.tls_self_signed or self.tls_cert_file is not None

    @property
    def resolved_public_url(self) -> str:
        scheme = "https" if self.serves_https else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"

    @property
    def embedded(self) -> bool:
        """Whether this process is Jiefen on its embedded defaults: one ``jiefen serve`` doing
        everything (role ``all``, the default), with whatever it needs made on first use under
        ``data_dir``.

        The production deployment (DESIGN.md, README) is told apart by role, not by the Redis
        URL: it splits into ``web``, ``media`` and ``worker`` processes on several hosts, so
        anything that must be the same everywhere (the signing key) has to be configured, not
        made per host. Several ``--role all`` processes sharing one Redis on one machine (the
        webhook benchmark) share their ``data_dir`` and stay embedded. A command run from a
        shell (``jiefen room finalise``) has role ``all`` unless ``JIEFEN_ROLE`` says otherwise;
        such commands also treat a shared Redis as a deployment (:attr:`command_embedded`).
        """
        return self.role == "all"

    @property
    def command_embedded(self) -> bool:
        """Whether a command run from a shell (``jiefen room finalise``, ``room open``,
        ``signing-key``) acts on an embedded installation: role ``all`` (a shell seldom sets
        ``JIEFEN_ROLE``) and the in-process Redis stand-in. A shell pointed at a shared Redis
        acts on a deployment of several processes, whose configured keys it must use too."""
        return self.embedded and not self.redis_url

    @property
    def serves_web(self) -> bool:
        """Whether this process serves the webhook, the join page and the APIs."""
        return self.role != "media"

    @property
    def hosts_rooms(self) -> bool:
        """Whether this process hosts rooms (signalling and media)."""
        return self.role in ("all", "media")

    @property
    def resolved_media_public_url(self) -> str:
        """Where browsers reach this process's rooms; ``""`` means the join page's own origin
        (``all`` serves the page and the rooms, under whatever name the browser used)."""
        if self.media_public_url:
            return self.media_public_url
        if self.role == "all":
            return ""
        scheme = "https" if self.serves_https else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def resolved_media_node_id(self) -> str:
        return self.media_node_id or f"{socket.gethostname()}:{self.port}"
