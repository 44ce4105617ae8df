"""The HTTP server's limits on one request and its answer, and their checks: a body's bytes and
the time it takes to arrive, its rows, the requests in flight at once, and the numbers in an
answer (a wide model's outputs on many rows, about 20 bytes of JSON each, refused before they
are encoded)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.serve.rest import RestError

__all__ = [
    "BODY_TIMEOUT_S",
    "MAX_ANSWER_VALUES",
    "MAX_BODY_BYTES",
    "MAX_IN_FLIGHT",
    "MAX_ROWS",
    "check_answer_size",
    "check_limits",
]

MAX_BODY_BYTES = 16 << 20
BODY_TIMEOUT_S = 30.0
MAX_ROWS = 10_000
MAX_IN_FLIGHT = 32
MAX_ANSWER_VALUES = 4_000_000  # numbers in one answer: about 80 MB of JSON


def check_limits(max_body_bytes: int, body_timeout_s: float, **counts: int | None) -> None:
    """An `EnsembleError` naming a limit that is no limit: a body size below 1 byte, a timeout
    not above 0, a count (`max_rows=...`) that is not an integer >= 1 or None."""
    if max_body_bytes < 1 or not body_timeout_s > 0:
        raise EnsembleError(
            f"Expected max_body_bytes >= 1 and body_timeout_s > 0. Received: {max_body_bytes}, {body_timeout_s}"
        )
    for option, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EnsembleError(f"Expected {option} to be an integer >= 1, or None. Received: {value!r}")


def check_answer_size(name: str, outputs: Any, limit: int | None) -> None:
    """A 413 when the answer of model `name` holds more than `limit` numbers (None: no limit)."""
    values = sum(np.size(v) for v in (outputs.values() if isinstance(outputs, dict) else [outputs]))
    if limit is not None and values > limit:
        raise RestError(
            413,
            f"Model {name!r}: the answer holds {values} numbers, past this server's limit of {limit} "
            "(create_app(max_answer_values=...), serve.max_answer_values): send fewer rows per request.",
        )
