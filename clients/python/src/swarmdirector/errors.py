"""Exceptions. Every error answer of swarmd is JSON
`{"error_code", "message", "field"?}` (schema `Error`); `ApiError` carries
it with the HTTP status, the request id and `Retry-After` (seconds), and a
subclass per status lets callers catch what they handle."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "SwarmError",
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ValidationError",
    "RateLimited",
    "Unavailable",
    "WaitTimeout",
]


class SwarmError(Exception):
    """Base of this package's exceptions."""


class ApiError(SwarmError):
    """swarmd answered with an error status.

    - `error_code`: the stable code (`invalid_field`, `queue_full`, …)
    - `message`: for people
    - `field`: the offending field (`args.to`, `X-Tenant`), or None
    - `status`: the HTTP status
    - `retry_after`: seconds from the `Retry-After` header, or None
    - `request_id`: the answer's `X-Request-Id` (it is on swarmd's log lines)
    """

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[float] = None,
        request_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        text = f"{status} {error_code}: {message}"
        if field:
            text += f" (field {field})"
        super().__init__(text)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body

    @property
    def retryable(self) -> bool:
        """Load and availability refusals (429, 503) may succeed later."""
        return self.status in (429, 503)


class BadRequest(ApiError):
    """400, 408, 413, 415: the request itself could not be taken."""


class Unauthorized(ApiError):
    """401: no key, or an unknown one."""


class Forbidden(ApiError):
    """403: the key may not do this."""


class NotFound(ApiError):
    """404: no such task (or another tenant's), or no such route."""


class Conflict(ApiError):
    """409: the task already ended, or an idempotency key was reused."""


class ValidationError(ApiError):
    """422: invalid input; `field` names it."""


class RateLimited(ApiError):
    """429: a tenant quota or stream/waiter limit; see `retry_after`."""


class Unavailable(ApiError):
    """503: load shed or the database unavailable; see `retry_after`."""


class WaitTimeout(SwarmError, TimeoutError):
    """`wait` gave up before the task ended; `task` is its last state."""

    def __init__(self, task_id: str, timeout: float, task: Any = None) -> None:
        super().__init__(f"task {task_id} did not end within {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout
        self.task = task


_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: BadRequest,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> ApiError:
    """The exception for an error answer (its body need not be JSON)."""
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error_code"), str):
        code, message, field = body["error_code"], str(body.get("message", "")), body.get("field")
    else:
        code = f"http_{status}"
        message = content[:500].decode("utf-8", "replace") or f"HTTP {status}"
        field = None
    cls = _BY_STATUS.get(status, ApiError)
    return cls(
        status,
        code,
        message,
        field=field,
        retry_after=parse_retry_after(headers.get("retry-after")),
        request_id=headers.get("x-request-id"),
        body=body,
    )
