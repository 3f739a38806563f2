"""Typed domain errors. Each names the gRPC status code it maps to; RPC bodies just raise.

The server error mapping (parrot.server.interceptors) turns these into statuses; any other
exception becomes INTERNAL with no detail leaked to the caller.
"""

from __future__ import annotations

import grpc


MAX_PROBLEM_CHARS = 500


def clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """An error message part cut to ``limit`` characters: a message that quotes the caller's
    input (a 1 MB string, say) stays short enough for a status, a log line and a terminal."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class ParrotError(Exception):
    """Base class: an error whose message is safe to show to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidArgument(ParrotError):
    """The request is malformed. The message names the field, what was wrong and what is allowed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400

    def __init__(self, field: str, problem: str):
        self.field = clip(field, 200)
        self.problem = clip(problem)
        super().__init__(f"{self.field}: {self.problem}")


class NotReady(ParrotError):
    """The model is still loading (or failed to load); retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unavailable(ParrotError):
    """An upstream (HTTP backend, remote model server) could not be reached or kept failing."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class NoAcceptableOutput(ParrotError):
    """The model answered, but none of its samples passed the service's checks (the asker's follow-up
    filters). Not an outage: the service is up, and asking again (another seed, a longer context) may
    succeed, so clients count it and move on instead of holding their calls."""

    code = grpc.StatusCode.ABORTED
    http_status = 422


class DeadlineExceeded(ParrotError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class ResourceExhausted(ParrotError):
    """A configured limit (queue size, message size, ...) was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class LimitExceeded(ResourceExhausted):
    """A request is over a configured limit (turns, tokens, characters, concurrency).

    Unlike a full queue this will not pass on retry: the server marks the status with the
    trailing metadata ``parrot-limit: <setting>`` and Parrot's clients do not retry it.
    The message names the field, the value, the limit and the setting that raises it.
    """

    def __init__(self, field: str, problem: str, setting: str):
        self.field, self.problem, self.setting = clip(field, 200), clip(problem), setting
        super().__init__(f"{self.field}: {self.problem} (limit set by {setting})")


class Unsupported(ParrotError):
    """The backend cannot do what was asked (for example token scoring over a chat API)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class ConfigError(Exception):
    """Bad configuration at start-up: the message names the setting (flag / env var)."""


class NotFound(ParrotError):
    """The named thing (a run, an object) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class FailedPrecondition(ParrotError):
    """The request is well-formed but cannot be served now (an endpoint it needs is unreachable)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 412


class PermissionDenied(ParrotError):
    """The caller may not make this process reach the named target or input (a policy, not a bad token)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
