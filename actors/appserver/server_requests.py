"""The server requests one connection has outstanding: integer ids from 0, each naming a thread's
pending request (its key, the runtime's approval id) until the thread settles it.

Each subscribed connection asks on its own ids; the first answer from any of them reaches the
thread, which settles the request for all. A connection that subscribes later is asked too (the
thread lists what is pending), and asking twice for one key is skipped, so the replay and the live
event may overlap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AskedRequest:
    thread_id: str
    key: str
    method: str


class ServerRequests:
    def __init__(self) -> None:
        self._ids = itertools.count()
        self._by_id: dict[int, AskedRequest] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        self._relayed: dict[int, tuple[object, Any]] = {}
        self._relay_ids: dict[tuple[int, Any], int] = {}

    # --- requests of another node, relayed (`upstream.py`) ----------------------
    def open_relay(self, source: object, source_id: Any) -> int:
        """An id, from the same count as this connection's own, for `source`'s request `source_id`."""
        request_id = next(self._ids)
        self._relayed[request_id] = (source, source_id)
        self._relay_ids[(id(source), source_id)] = request_id
        return request_id

    def relayed(self, request_id: Any) -> tuple[object, Any] | None:
        """(source, its id) of the relayed request `request_id`, while it is outstanding."""
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        return self._relayed.get(request_id)

    def close_relay(self, source: object, source_id: Any) -> int | None:
        """Forget `source`'s request `source_id` (settled); the id it had here, if it had one."""
        request_id = self._relay_ids.pop((id(source), source_id), None)
        if request_id is not None:
            del self._relayed[request_id]
        return request_id

    def forget_source(self, source: object) -> None:
        """Forget every request of `source` (it went away)."""
        for owner, source_id in list(self._relayed.values()):
            if owner is source:
                self.close_relay(source, source_id)

    def open(self, thread_id: str, key: str, method: str) -> int | None:
        """A new request id for the thread's request `key`; None if it is asked already."""
        if (thread_id, key) in self._by_key:
            return None
        request_id = next(self._ids)
        self._by_id[request_id] = AskedRequest(thread_id, key, method)
        self._by_key[(thread_id, key)] = request_id
        return request_id

    def get(self, request_id: Any) -> AskedRequest | None:
        """The request `request_id` names, if it is outstanding (ids are ints, as sent)."""
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        return self._by_id.get(request_id)

    def close(self, thread_id: str, key: str) -> int | None:
        """Forget the request `key`; its id, if this connection had asked it."""
        request_id = self._by_key.pop((thread_id, key), None)
        if request_id is not None:
            del self._by_id[request_id]
        return request_id

    def forget_thread(self, thread_id: str) -> None:
        """Forget the thread's requests (this connection no longer follows it)."""
        for thread, key in [k for k in self._by_key if k[0] == thread_id]:
            self.close(thread, key)
