"""The exceptions aidp-metrics raises.

Every error that comes from a server carries what support needs to find the request
(`opc_request_id`, method, path) and nothing that could leak a credential.
"""

from __future__ import annotations

from aidp_metrics._redact import redact


class AIDPError(Exception):
    """Base class of every error raised by aidp-metrics."""


class ConfigurationError(AIDPError, ValueError):
    """Missing or inconsistent configuration: the message says what to set.

    The message is redacted (`aidp_metrics._redact`): it may quote a URL or a library's
    error about a key file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class NoEndpointConfigured(ConfigurationError):
    """Neither an AIDP workspace nor an MLflow tracking URI is configured."""


class InvalidMetric(AIDPError, ValueError):
    """A metric key, value, step or timestamp that the server would reject."""


class APIError(AIDPError):
    """An HTTP request failed. `str()` is one line naming status, code, request id and path."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        opc_request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # A server's message may echo what it was sent (a key id, a header).
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.opc_request_id = opc_request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else type(self).__name__
        if self.code:
            head += f" {self.code}"
        where = f" ({self.method} {self.path})" if self.method and self.path else ""
        rid = f" [opc-request-id: {self.opc_request_id}]" if self.opc_request_id else ""
        return f"{head}: {self.message}{where}{rid}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class BadRequest(APIError):
    """400: the request was malformed (bad key, value, or a changed param)."""


class Unauthorized(APIError):
    """401: missing, expired or wrong credentials, or a clock more than 5 minutes off."""


class NotFound(APIError):
    """404: wrong instance, workspace, run or path."""


class Conflict(APIError):
    """409: the request conflicts with the resource's state."""


class TooManyRequests(APIError):
    """429: rate limited; `retry_after` holds the server's hint in seconds, if any."""


class ServerError(APIError):
    """5xx, or any status the API does not document."""


class UnexpectedResponse(ServerError):
    """A 2xx answer that is not the JSON object the API returns (a login page from a proxy,
    a truncated body): retried like a server error, since it says nothing about the data."""


class TransportError(APIError):
    """The request did not get an HTTP answer (connection refused, reset, timeout)."""


class DeliveryError(AIDPError):
    """Strict mode only: metrics could not be delivered (the message says how many and why)."""


class AIDPMetricsWarning(UserWarning):
    """Something was not logged the way the training code asked; training goes on."""
