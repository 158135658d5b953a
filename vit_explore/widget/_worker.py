"""Jobs off the kernel thread: one worker thread per widget, request ids, one lock per model.

* ``_Worker`` runs jobs by slot on a daemon thread, so the kernel keeps answering comm
  messages while a job runs; a new job replaces the pending job of its slot.
* ``RequestIds`` numbers the requests of each slot: a job publishes its result only while its
  id is still the newest, so a result superseded while it ran is dropped.
* ``model_lock`` is one re-entrant lock per model object: capture installs hooks on the model,
  so two widgets on one model (an Atlas and the Explorer it opened) never run it at once.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable

from torch import nn

#: every live worker, for ``_join_all_at_exit``
_LIVE: weakref.WeakSet[_Worker] = weakref.WeakSet()


class _Worker:
    """One daemon thread running jobs by slot; a new job replaces the pending job of its slot.

    At interpreter exit the pending jobs are dropped and the running one is waited for
    (``_join_all_at_exit``): a daemon thread still inside torch while the interpreter tears down
    its thread pools aborts the process ("terminate called without an active exception")."""

    def __init__(self, on_state: Callable[[bool, str], None],
                 on_error: Callable[[str, BaseException], object] | None = None):
        self._on_error = on_error
        self._cv = threading.Condition()
        self._pending: dict[str, tuple[str, Callable[[], object]]] = {}
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        self._on_state = on_state
        self._closed = False
        _LIVE.add(self)

    def close(self, timeout: float | None = None) -> bool:
        """Drop the pending jobs, refuse new ones, and wait for the running job to end;
        False when it is still running after ``timeout`` seconds."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            thread = self._thread
            self._cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def submit(self, slot: str, label: str, fn: Callable[[], object]) -> None:
        with self._cv:
            if self._closed:
                return
            self._pending.pop(slot, None)  # superseded
            self._pending[slot] = (label, fn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vx-explorer", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._running = None
                    self._cv.notify_all()
                    if self._closed or (not self._cv.wait(timeout=30.0) and not self._pending):
                        self._thread = None
                        return
                slot = next(iter(self._pending))
                label, fn = self._pending.pop(slot)
                self._running = slot
            try:  # the loop outlives any job: a failure is reported, the next job runs
                if label:
                    self._on_state(True, label)
                fn()
            except Exception as e:  # noqa: BLE001
                self._report(slot, label, e)
            finally:
                with self._cv:
                    idle = not self._pending
                    if idle:
                        self._running = None
                        self._cv.notify_all()
                if idle:
                    try:
                        self._on_state(False, "")
                    except Exception as e:  # noqa: BLE001
                        self._report(slot, label, e)

    def _report(self, slot: str, label: str, exc: BaseException) -> None:
        try:
            if self._on_error is not None:
                self._on_error(label or slot, exc)
        except Exception:  # noqa: BLE001, S110 - the reporter itself failed: nothing more to do
            pass

    def idle(self) -> bool:
        with self._cv:
            return not self._pending and self._running is None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is pending or running; False on time-out."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._pending or self._running is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(timeout=0.05 if left is None else min(left, 0.05))
        return True


@atexit.register
def _join_all_at_exit(timeout: float = 120.0) -> None:
    """Close every live worker before the interpreter finalises (see ``_Worker``)."""
    for w in list(_LIVE):
        w.close(timeout)


class RequestIds:
    """Per-slot request ids (1, 2, ...): ``new(slot)`` when a request arrives, ``current(slot, rid)``
    before a job publishes what it computed for request ``rid``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def new(self, slot: str) -> int:
        with self._lock:
            self._last[slot] = self._last.get(slot, 0) + 1
            return self._last[slot]

    def last(self, slot: str) -> int:
        """The newest id of ``slot`` (0 before the first request)."""
        with self._lock:
            return self._last.get(slot, 0)

    def current(self, slot: str, rid: int) -> bool:
        return self.last(slot) == rid


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model`` (held while a widget's job runs it)."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock
