"""Lease handoff between Spindle processes on one CODEX_HOME.

Each runtime listens on an abstract Unix socket (Linux; its address is written into every lease
it holds). Another Spindle process that wants a thread whose lease this one holds connects, sends
one `HandoffRequest` line and reads one `HandoffReply` line: the runtime unloads the thread
(flushes, closes the rollout, lets go of the lease) unless a turn is running. Only processes of
the same user are answered (`SO_PEERCRED`).
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.persistence.lease import (
    HandoffReply,
    HandoffRequest,
    LeaseHolder,
    WriterLeaseHeldError,
)
from spindle.protocol.ids import parse_thread_id

log = structlog.get_logger(__name__)

HANDOFF_TIMEOUT_S = 15.0
"""How long a handoff may take: the holder flushes and closes the thread's rollout meanwhile."""
HANDOFF_MAX_LINE = 4096
HANDOFF_BACKLOG = 16

Release = Callable[[str], Awaitable[str | None]]
"""Unload a thread for another process: None once it is let go, else why it is kept."""

_request_decoder = msgspec.json.Decoder(HandoffRequest)
_reply_decoder = msgspec.json.Decoder(HandoffReply)
_encoder = msgspec.json.Encoder()


def handoff_supported() -> bool:
    return sys.platform.startswith("linux")


async def serve_handoffs(release: Release, *, task_status: TaskStatus[str | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer handoff requests until cancelled; `task_status` gets the address (None where the
    platform has no abstract Unix sockets: leases are then never handed off, only waited out)."""
    if not handoff_supported():
        task_status.started(None)
        return
    name = f"spindle-handoff/{os.getpid()}/{secrets.token_hex(8)}"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind("\0" + name)
        sock.listen(HANDOFF_BACKLOG)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    task_status.started("@" + name)
    async with listener, trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()
            nursery.start_soon(_answer, stream, release)


async def _answer(stream: trio.SocketStream, release: Release) -> None:
    async with stream:
        if not _same_user(stream):
            log.warning("refused a handoff request from another user")
            return
        with trio.move_on_after(HANDOFF_TIMEOUT_S):
            try:
                request = _request_decoder.decode(await _read_line(stream))
                thread_id = parse_thread_id(request.release)
            except (msgspec.DecodeError, ValueError, trio.BrokenResourceError) as exc:
                await _send(stream, HandoffReply(released=False, reason=f"bad handoff request: {exc}"))
                return
            log.info("handoff requested", thread_id=thread_id)
            try:
                reason = await release(thread_id)
            except Exception as exc:  # a handoff never takes the runtime down
                log.exception("handoff failed", thread_id=thread_id)
                reason = f"it failed to let go: {type(exc).__name__}: {exc}"
            await _send(stream, HandoffReply(released=reason is None, reason=reason))


def _same_user(stream: trio.SocketStream) -> bool:
    creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(HANDOFF_MAX_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > HANDOFF_MAX_LINE:
            raise ValueError(f"line longer than {HANDOFF_MAX_LINE} bytes")
    return data.split(b"\n", 1)[0]


async def _send(stream: trio.SocketStream, reply: HandoffReply) -> None:
    try:
        await stream.send_all(_encoder.encode(reply) + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def request_handoff(holder: LeaseHolder, thread_id: str) -> None:
    """Ask `holder` to let go of `thread_id`; returns once it has, else WriterLeaseHeldError
    saying why not (it refused, did not answer in time, or cannot be reached)."""
    address = holder.handoff
    if address is None or not address.startswith("@") or not handoff_supported():
        raise WriterLeaseHeldError(thread_id, holder, detail="it takes no handoff requests; stop it, or wait until it unloads the thread")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(HANDOFF_TIMEOUT_S):
            await sock.connect("\0" + address[1:])
            stream = trio.SocketStream(sock)
            async with stream:
                await stream.send_all(_encoder.encode(HandoffRequest(release=thread_id)) + b"\n")
                line = await _read_line(stream)
                if not line:
                    raise ValueError(f"{address} closed the connection without answering")
                reply = _reply_decoder.decode(line)
    except trio.TooSlowError:
        raise WriterLeaseHeldError(thread_id, holder, detail=f"it did not let go within {HANDOFF_TIMEOUT_S:g} s") from None
    except (OSError, trio.BrokenResourceError, msgspec.DecodeError, ValueError) as exc:
        raise WriterLeaseHeldError(thread_id, holder, detail=f"its handoff service did not answer ({exc})") from None
    finally:
        sock.close()
    if not reply.released:
        raise WriterLeaseHeldError(thread_id, holder, detail=f"it keeps the thread: {reply.reason}")
