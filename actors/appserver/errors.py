"""Spindle's own errors as JSON-RPC errors, in one table."""

from __future__ import annotations

from spindle.actors.runtime import ConfigError, ThreadNotFoundError
from spindle.persistence.query import InvalidThreadQuery
from spindle.persistence.reader import RolloutReadError
from spindle.persistence.store import ThreadStoreError, ThreadStoreUnavailableError
from spindle.protocol.appserver.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    RpcError,
)
from spindle.protocol.appserver.v2map import UnsupportedInput

DOMAIN_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (ThreadStoreUnavailableError, INTERNAL_ERROR),
    (InvalidThreadQuery, INVALID_PARAMS),
    (ThreadStoreError, INVALID_REQUEST),
    (RolloutReadError, INVALID_REQUEST),
    (ThreadNotFoundError, INVALID_REQUEST),
    (ConfigError, INVALID_PARAMS),
    (UnsupportedInput, INVALID_PARAMS),
)
"""A state the request cannot act on, or params it cannot use."""
INVALID_PARAMS_PREFIX = "Invalid params: "


def rpc_error(exc: Exception) -> RpcError | None:
    """`exc` as the error answer to a request, if it is one of Spindle's own errors. Params it
    cannot use answer "Invalid params: ...", as the real app-server does."""
    for kind, code in DOMAIN_ERRORS:
        if isinstance(exc, kind):
            message = str(exc)
            if code == INVALID_PARAMS and not message.startswith(INVALID_PARAMS_PREFIX):
                message = INVALID_PARAMS_PREFIX + message
            return RpcError(code, message)
    return None
