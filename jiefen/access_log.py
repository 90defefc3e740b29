"""One log line per request with its latency, without the query string.

WeChat signs pushes in the query string (signature, nonce, timestamp) and names the sender
(``openid``): logging them would hand anyone who reads the logs what they need to replay a push
and who sent it. So the line has the path only.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


class PathOnlyAccessLogger(AbstractAccessLogger):
    """``<remote> "<METHOD> <path>" <status> <bytes> <ms>ms``."""

    @property
    def enabled(self) -> bool:
        # Read once per connection by aiohttp: below INFO, requests are neither timed nor logged.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
        )
