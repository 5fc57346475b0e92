"""The one error vocabulary of the suite.

Domain and service code raise these; `shared.http` turns them into RFC 9457 problem+json responses and
`shared.bus` into request/reply error headers. Nothing else maps errors to status codes.
"""

from __future__ import annotations

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    """One invalid input: where (`$.spec.owner`, `query.limit`, `header.If-Match`) and why."""

    field: str
    message: str


class ProblemError(Exception):
    """Base of every error that reaches a caller. `status` is the HTTP status it maps to."""

    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InputError(ProblemError):
    """The request is malformed or fails validation; `errors` names the fields at fault."""

    status, title, slug = 400, "Invalid input", "invalid-input"

    @classmethod
    def for_field(cls, field: str, message: str) -> InputError:
        return cls(f"{field}: {message}", errors=[FieldError(field, message)])


class AuthenticationError(ProblemError):
    """No credentials, or credentials that cannot be verified."""

    status, title, slug = 401, "Authentication required", "unauthenticated"


class NotAllowedError(ProblemError):
    """The caller is known but may not do this."""

    status, title, slug = 403, "Forbidden", "forbidden"


class NotFoundError(ProblemError):
    status, title, slug = 404, "Not found", "not-found"


class ConflictError(ProblemError):
    status, title, slug = 409, "Conflict", "conflict"


class PreconditionFailedError(ProblemError):
    """An `If-Match` etag no longer matches the stored resource."""

    status, title, slug = 412, "Precondition failed", "precondition-failed"


class PayloadTooLargeError(ProblemError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaTypeError(ProblemError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class BadGatewayError(ProblemError):
    """An upstream system answered wrongly or could not be reached (proxied calls)."""

    status, title, slug = 502, "Bad gateway", "bad-gateway"


class ServiceUnavailableError(ProblemError):
    """A dependency (database, bus, agent) is unreachable; the caller may retry."""

    status, title, slug = 503, "Service unavailable", "unavailable"


class GatewayTimeoutError(ProblemError):
    """An upstream system did not answer in time (proxied calls)."""

    status, title, slug = 504, "Gateway timeout", "gateway-timeout"


ERRORS_BY_STATUS: dict[int, type[ProblemError]] = {
    cls.status: cls
    for cls in (
        InputError,
        AuthenticationError,
        NotAllowedError,
        NotFoundError,
        ConflictError,
        PreconditionFailedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        BadGatewayError,
        ServiceUnavailableError,
        GatewayTimeoutError,
    )
}


def input_error_from_validation(exc: msgspec.ValidationError, prefix: str = "$") -> InputError:
    """Turn msgspec's `Expected int, got str - at $.limit` into an InputError naming `$.limit`."""
    message = str(exc)
    field = prefix
    if " - at `" in message:
        message, _, path = message.partition(" - at `")
        path = path.rstrip("`")
        field = prefix + path[1:] if path.startswith("$") else path
    return InputError(f"{field}: {message}", errors=[FieldError(field, message)])
