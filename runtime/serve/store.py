"""The responses this server stored, for `previous_response_id` (the Responses API, responses.py): a bounded LRU.

    store = ResponseStore(max_count=1024, max_bytes=64_000_000)   # --max-stored-responses, --max-store-mb
    store.put(id, entry, size)       # the least recently used entries leave until both bounds hold again
    store.get(id)                    # the entry (now the most recently used) or None: evicted or never stored

An entry larger than `max_bytes` on its own is not kept (put returns False). Thread-safe: the parsing thread reads
it while the event loop writes the responses that finish.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ResponseStore:
    def __init__(self, max_count: int, max_bytes: int) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"max_count and max_bytes must be >= 1, found {max_count}, {max_bytes}")
        self.max_count, self.max_bytes = max_count, max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, entry: Any, size: int) -> bool:
        """Keep `entry` (of about `size` bytes) under `key`; False when it alone is over the byte bound."""
        if size > self.max_bytes:
            return False
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (entry, size)
            self._bytes += size
            while len(self._entries) > self.max_count or self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]
        return True

    def get(self, key: str) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
