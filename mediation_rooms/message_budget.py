"""How often one signalling connection may send the messages that cost the whole room: a token
bucket per kind of message. No I/O; the caller passes the time.

A chat line goes to everyone in the sender's group and into the timeline; a ``media_state``
goes into the timeline and out to everyone as ``presence``. A page that floods either (a bug, a
script, a stuck button) would fill the evidence with noise and keep every other page busy, so
each connection gets a budget: ``burst`` at once, then ``rate_per_s``. What happens to a message
over its budget is the caller's rule (``room_hub``): a chat line is refused (``rate_limited``),
a ``media_state`` is deferred, the latest one applied when the budget allows, since the room
must end up knowing the person's last switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Chat lines: five at once, then one a second.
CHAT_RATE_PER_S, CHAT_BURST = 1.0, 5
#: Microphone and camera switches (the page also reports them after every connection): six at
#: once, then two a second.
MEDIA_STATE_RATE_PER_S, MEDIA_STATE_BURST = 2.0, 6


@dataclass
class TokenBucket:
    """At most ``burst`` messages at once, refilled at ``rate_per_s`` (times: monotonic s)."""

    rate_per_s: float
    burst: int
    _tokens: float = field(init=False)
    _updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(
                f"a budget needs a positive rate and burst, not {self.rate_per_s}/s, {self.burst}"
            )
        self._tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one message of the budget at ``now``; False (nothing spent) if there is none."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until :meth:`take` can succeed (0: it can now)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) / self.rate_per_s)


def chat_budget() -> TokenBucket:
    return TokenBucket(CHAT_RATE_PER_S, CHAT_BURST)


def media_state_budget() -> TokenBucket:
    return TokenBucket(MEDIA_STATE_RATE_PER_S, MEDIA_STATE_BURST)
