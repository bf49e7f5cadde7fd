"""Domain errors, and their one mapping to gRPC status codes with rich details.

Servicers and domain code raise these; the server interceptor turns them into a
status with a `google.rpc.ErrorInfo` (and a `google.rpc.BadRequest` for bad
fields). Messages must never carry a secret, token, API key or prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN_SUFFIX = ".empire-security"


class EmpireError(Exception):
    """Base of every error a caller may see. Subclasses fix the status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(EmpireError):
    """A request field is missing or malformed; names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        field: str,
        description: str,
        *,
        reason: str | None = None,
        more: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(
            f"{field}: {description}", reason=reason, metadata={"field": field}
        )
        self.field = field
        self.violations = [(field, description), *more]


class NotFound(EmpireError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(EmpireError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Aborted(EmpireError):
    """A compare-and-set or other optimistic check lost a race."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class FailedPrecondition(EmpireError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(EmpireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(EmpireError):
    """A dependency (database, Redis, provider, peer service) is down."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(EmpireError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(EmpireError):
    """No credential, or one that does not verify."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(EmpireError):
    """A valid credential that lacks the scope the method or resource needs."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unimplemented(EmpireError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


GENERIC_INTERNAL_MESSAGE = "internal error; the server logged the details"


def to_rich_status(error: EmpireError, service: str) -> status_pb2.Status:
    """The `google.rpc.Status` a caller receives for `error`."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=service + ERROR_DOMAIN_SUFFIX,
        metadata=error.metadata,
    )
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=field, description=description, reason=error.reason
                )
                for field, description in error.violations
            ]
        )
        details.append(_pack(bad_request))
    return status_pb2.Status(
        code=error.code.value[0], message=error.message, details=details
    )


def internal_status(service: str) -> status_pb2.Status:
    """The status for an unexpected exception: generic, with no internals."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=service + ERROR_DOMAIN_SUFFIX
    )
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=GENERIC_INTERNAL_MESSAGE, details=[_pack(info)]
    )


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
