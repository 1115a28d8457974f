"""Doctor's probe: what the raw HTTP exchange looked like, and the clock skew it shows."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

MAX_CLOCK_SKEW = 300.0  # seconds; OCI rejects signed requests whose date is further off


def clock_skew(date_header: str | None, sent: float, received: float) -> float | None:
    """Server clock minus local clock in seconds (positive: the server is ahead).

    `sent` and `received` are local epoch times around the request; the server stamped
    `Date` somewhere in between. `Date` has whole seconds (truncated), hence the +0.5.
    None when the header is missing or unparseable.
    """
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if server.tzinfo is None:  # "-0000" means UTC without a known zone
        return None
    return server.timestamp() + 0.5 - (sent + received) / 2


@dataclass
class Exchange:
    """The last raw response's status and `Date`, the local times around it, the attempts."""

    status: int | None = None
    date: str | None = None
    sent: float = 0.0
    received: float = 0.0
    attempts: int = 0

    def skew(self) -> float | None:
        """`clock_skew` of the last response; None when there was none."""
        if self.status is None:
            return None
        return clock_skew(self.date, self.sent, self.received)


def recording_auth(inner: httpx.Auth | None, exchange: Exchange) -> httpx.Auth:
    """Wraps the real auth to note each raw response's status, `Date` and timing.

    An auth wrapper rather than a custom transport: httpx ignores proxy variables when a
    transport is given, and doctor must take the same network path as the real client.
    """
    import httpx

    class RecordingAuth(httpx.Auth):
        requires_request_body = bool(getattr(inner, "requires_request_body", False))

        def auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response, None]:
            flow = inner.auth_flow(request) if inner is not None else _unchanged(request)
            outgoing = next(flow)
            while True:
                exchange.attempts += 1
                exchange.sent = time.time()
                response = yield outgoing
                exchange.received = time.time()
                exchange.status = response.status_code
                exchange.date = response.headers.get("date")
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return

    return RecordingAuth()


def _unchanged(request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
    yield request
