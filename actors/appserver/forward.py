"""A client may connect to any node: a request for a thread another live node runs goes to that
node, over the app-server protocol, and its answer, notifications and server requests come back.

A `Connection` of a node has a `Forwarder`. A request that names a thread this node has not
loaded is looked up in the store: when another live node holds the thread's lease, the request
is forwarded there on the client's upstream connection to that node (`upstream.py`; one per
owner, opened with the first request and kept while the client is connected, so it carries the
client's subscriptions there). Otherwise this node serves it, as any request. Each request is
looked up afresh: once an owner is gone and its lease has run out, the next request is served
here (a resume takes the thread); while its lease still runs, the client is told whose it is and
that the node cannot be reached.
"""

from __future__ import annotations

import msgspec
import trio

from spindle.actors.runtime.cluster import Cluster, Owner
from spindle.protocol.appserver.jsonrpc import INVALID_REQUEST, Request, RpcError

from .upstream import Downstream, Upstream, UpstreamError


class Forwarder:
    """One client's way to the threads other nodes run (see the module doc)."""

    def __init__(self, cluster: Cluster, downstream: Downstream) -> None:
        self.cluster = cluster
        self.downstream = downstream
        self.hello: msgspec.Raw | None = None
        """The client's `initialize` params: each upstream connection opens with them."""
        self._upstreams: dict[Owner, Upstream] = {}
        self._opening = trio.Lock()

    async def forward(self, nursery: trio.Nursery, request: Request) -> bool:
        """Whether another node runs the thread `request` names; if so, its answer has gone to
        the client (RpcError naming the thread and its owner when the owner cannot be reached)."""
        assert request.thread_id is not None
        owner = await self.cluster.owner(request.thread_id)
        if owner is None:
            return False
        try:
            upstream = await self._upstream(nursery, owner)
            await upstream.forward(request.id, request.method, request.params)
        except UpstreamError as exc:
            raise RpcError(INVALID_REQUEST, (
                f"thread {request.thread_id} is run by node {owner.node_id!r}, and this node cannot reach it: {exc}."
                " Try again: once that node's lease on the thread runs out, any node takes the thread"),
                {"threadId": request.thread_id, "nodeId": owner.node_id}) from None
        return True

    async def _upstream(self, nursery: trio.Nursery, owner: Owner) -> Upstream:
        """The client's open connection to `owner`, opened now if there is none (or it ended)."""
        async with self._opening:
            upstream = self._upstreams.get(owner)
            if upstream is None or upstream.gone is not None:
                upstream = await nursery.start(Upstream(owner, self.downstream, self.hello).run)
                self._upstreams[owner] = upstream
            return upstream

    def ended(self, upstream: Upstream) -> None:
        if self._upstreams.get(upstream.owner) is upstream:
            del self._upstreams[upstream.owner]
