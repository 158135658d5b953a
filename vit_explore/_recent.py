"""A small keyed store of the most recently used tensors (noise draws, input buffers)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch


class RecentTensors:
    """The last ``entries`` tensors by key; storing or reading one makes it the newest and the
    oldest is dropped first. A tensor over ``max_bytes`` is not kept. Thread-safe (the
    Explorer computes on a worker thread)."""

    def __init__(self, entries: int, max_bytes: int) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[torch.Tensor]:
        with self._lock:
            return list(self._items.values())

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The tensor under ``key`` (it stays), or None."""
        with self._lock:
            t = self._items.get(key)
            if t is not None:
                self._items.move_to_end(key)
            return t

    def pop(self, key: Hashable) -> torch.Tensor | None:
        """The tensor under ``key``, taken out (no other caller gets it until it is put back), or None."""
        with self._lock:
            return self._items.pop(key, None)

    def put(self, key: Hashable, t: torch.Tensor) -> None:
        if t.numel() * t.element_size() > self.max_bytes:
            return
        with self._lock:
            self._items[key] = t
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
