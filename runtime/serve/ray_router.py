"""Prefix affinity for Ray Serve: requests that share a prompt prefix go to the same replica.

A custom router on Ray Serve's request-router API (`ray.serve.request_router`, set as the deployment's
`request_router_config`; it runs where the deployment handle is, in `mxport serve --ray`'s front door). Each
forwarded request carries its routing text (ray_app.routing_text: the leading system messages and the first user
message of a conversation, or the start of a completion prompt), so every turn of a conversation has the same key.

    key -> replicas ranked by rendezvous hashing (highest blake2b(key, replica id) first)
        rank 1: the first replica, unless its known queue is `imbalance` requests longer than the shortest
        rank 2: every other replica (Ray then takes the one with the shortest queue that accepts)

A Responses request with `previous_response_id` is pinned: the front door routes it by the text of the
request that made that response (ray_app.FrontDoor.sessions), and only that home may take it (the response is
stored in that replica's process).

Rendezvous hashing moves only the keys of a replica that leaves (a killed one, a scale-down): the other
conversations stay where their prefix is cached. A request without a key (a bad body: its replica answers the
400) and a full preferred replica fall back to the shortest queue. Ray's own prefix-aware router
(`ray.serve.llm`'s PrefixCacheAffinityRouter) needs the `ray[llm]` extra (vLLM) to import; this one needs
`ray[serve]` only.
"""

from __future__ import annotations

import hashlib
import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

IMBALANCE = 2  # requests by which the preferred replica may exceed the least loaded one (a CPU step slows per row)


def request_key(pending: PendingRequest | None) -> tuple[str | None, bool]:
    """The routing text of a forwarded request (ray_app.Forwarded.prompt), if it has one, and whether only its
    first replica may take it (Forwarded.pinned)."""
    for arg in (pending.args if pending is not None else None) or ():
        text = getattr(arg, "prompt", None)
        if isinstance(text, str) and text:
            return text, bool(getattr(arg, "pinned", False))
    return None, False


def rank(key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids in rendezvous order for `key` (the first one is the key's home)."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{rid}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, imbalance: int = IMBALANCE, **kwargs) -> None:
        self.imbalance = int(imbalance)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key, pinned = request_key(pending_request)
        if key is None or len(candidate_replicas) == 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = [by_id[rid] for rid in rank(key, list(by_id))]
        home, rest = order[0], order[1:]
        if pinned:  # it names a response stored on its home: wait for that replica (Ray retries with backoff)
            return [[home]]
        queues = [self.replica_queue_len_cache.get(r.replica_id) for r in order]
        known = [q for q in queues if q is not None]
        if queues[0] is not None and known and queues[0] - min(known) > self.imbalance:
            return [rest, [home]]
        return [[home], rest]
