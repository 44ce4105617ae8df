"""Request batching: concurrent requests to one model answered by one call on their rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import keras
import numpy as np

from ensemble.rows import as_numpy

__all__ = ["Batcher"]


class Batcher:
    """Answers concurrent requests to one model with one call on their concatenated rows.

    The first request of a batch leads: it waits the window, takes every request that
    arrived meanwhile, calls the model once, and hands each request its rows. When that call
    fails, each request is answered by a call on its own rows, so a request the model refuses
    fails alone. No thread of its own; a request waits the window plus one call (plus one per
    request of its batch when the joined call failed).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[dict[str, np.ndarray], Future[Any]]] = []

    def submit(
        self,
        call: Callable[[Any], Any],
        feeds: dict[str, np.ndarray],
        window: float,
        on_call: Callable[[], None],
    ) -> Any:
        future: Future[Any] = Future()
        with self._lock:
            self._pending.append((feeds, future))
            leads = len(self._pending) == 1
        if leads:
            time.sleep(window)
            with self._lock:
                batch, self._pending = self._pending, []
            try:
                joined = {k: np.concatenate([f[k] for f, _ in batch]) for k in batch[0][0]}
                outputs = as_numpy(call(joined))
                on_call()
                start = 0
                for request, waiting in batch:
                    rows = len(next(iter(request.values())))
                    waiting.set_result(
                        keras.tree.map_structure(
                            lambda v, start=start, rows=rows: v[start : start + rows], outputs
                        )
                    )
                    start += rows
            except Exception:
                # One request's rows can fail the joined call (an id out of range): answer each
                # request on its own rows, so only the requests that fail alone fail.
                for request, waiting in batch:
                    if not waiting.done():
                        try:
                            waiting.set_result(as_numpy(call(request)))
                            on_call()
                        except Exception as error:
                            waiting.set_exception(error)
            except BaseException as error:
                for _, waiting in batch:
                    if not waiting.done():
                        waiting.set_exception(error)
        return future.result()
