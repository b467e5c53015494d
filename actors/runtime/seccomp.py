"""The seccomp filter a sandboxed command without network runs under, compiled to classic BPF.

`--unshare-net` gives the command an empty network namespace, but a Unix socket on the host
filesystem (`/var/run/postgresql/.s.PGSQL.5432`, `/var/run/docker.sock`) stays connectable through
the read-only bind of `/`: a Unix socket's address is a path, not part of the network namespace.
Seccomp cannot read the address a `connect` names (it is behind a pointer), so the filter removes
the sockets that could name one instead:

- `socket(domain, …)` is allowed only for `AF_INET`, `AF_INET6` (inside the empty namespace: its
  own loopback, nothing more) and `AF_NETLINK` (`getaddrinfo`, `ip`); `AF_UNIX`, `AF_VSOCK` (a VM's
  host) and every other family fail with `EPERM`;
- `socketpair` is allowed only for `AF_UNIX` streams and seqpackets, which stay connected to their
  pair: a `SOCK_DGRAM` pair could still `sendto` a host datagram socket by path (`/dev/log`);
- `io_uring_setup`/`_enter`/`_register` fail, since io_uring can open and connect sockets without
  those system calls;
- a system call of another ABI (x32, or 32-bit compat through `int 0x80`, whose `socketcall`
  multiplexes every socket call behind a pointer) fails with `EPERM`.

What this breaks inside a no-network sandbox: programs that talk to a local daemon over a Unix
socket (ssh-agent, gpg-agent, D-Bus, nscd — glibc falls back to the files), Python
`multiprocessing` with the `forkserver` start method, and Unix-socket servers a command starts for
itself. With network on, no filter is installed.

The program is the array of `struct sock_filter` that `bwrap --seccomp FD` reads and installs (it
sets `no_new_privs` itself). Supported machines: x86_64 and aarch64.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# struct seccomp_data: u32 nr, u32 arch, u64 instruction_pointer, u64 args[6]
_NR = 0
_ARCH = 4
_ARG0_LO = 16
_ARG1_LO = 24

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_AND_K = 0x54
_RET_K = 0x06

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
SOCK_DGRAM = 2
SOCK_TYPE_MASK = 0xF
"""`type` of `socket`/`socketpair` also carries `SOCK_NONBLOCK`/`SOCK_CLOEXEC`; the kind is the low bits."""
ALLOWED_SOCKET_FAMILIES = (AF_INET, AF_INET6, AF_NETLINK)


@dataclass(frozen=True, kw_only=True)
class Abi:
    """The numbers the filter needs for one architecture."""

    audit_arch: int
    socket: int
    socketpair: int
    io_uring: tuple[int, int, int]
    x32_bit: int | None = None
    """Syscall numbers with this bit set belong to a second ABI sharing the audit arch (x86_64's x32)."""


ABIS = {
    "x86_64": Abi(audit_arch=0xC000003E, socket=41, socketpair=53, io_uring=(425, 426, 427), x32_bit=0x40000000),
    "aarch64": Abi(audit_arch=0xC00000B7, socket=198, socketpair=199, io_uring=(425, 426, 427)),
}
ABIS["amd64"] = ABIS["x86_64"]
ABIS["arm64"] = ABIS["aarch64"]


class SeccompUnsupported(Exception):
    """No filter can be built for this machine."""


def native_abi() -> Abi:
    machine = platform.machine().lower()
    try:
        return ABIS[machine]
    except KeyError:
        raise SeccompUnsupported(
            f"no seccomp filter for machine {machine!r} (supported: x86_64, aarch64)"
        ) from None


class _Program:
    """Instructions with symbolic jump targets, resolved to relative offsets by `assemble`."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((_LD_W_ABS, 0, 0, offset))

    def and_(self, mask: int) -> None:
        self._code.append((_AND_K, 0, 0, mask))

    def jump(self, op: int, k: int, true: str | int, false: str | int = 0) -> None:
        """If the accumulator `op` k go to label `true`, else to `false` (0: the next instruction)."""
        self._code.append((op, true, false, k))

    def ret(self, value: int) -> None:
        self._code.append((_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self._code):
            out += struct.pack("<HBBI", code, self._offset(index, jt), self._offset(index, jf), k)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"jump to {target!r} out of range")
        return offset


def no_network_filter(abi: Abi | None = None) -> bytes:
    """The BPF program (an array of `struct sock_filter`) of the module's policy for `abi`."""
    abi = abi or native_abi()
    deny = _RET_ERRNO | errno.EPERM
    p = _Program()
    p.load(_ARCH)
    p.jump(_JEQ_K, abi.audit_arch, 0, "deny")
    p.load(_NR)
    if abi.x32_bit is not None:
        p.jump(_JGE_K, abi.x32_bit, "deny")
    p.jump(_JEQ_K, abi.socket, "socket")
    p.jump(_JEQ_K, abi.socketpair, "socketpair")
    for nr in abi.io_uring:
        p.jump(_JEQ_K, nr, "deny")
    p.ret(_RET_ALLOW)
    p.label("socket")
    p.load(_ARG0_LO)
    *first, last = ALLOWED_SOCKET_FAMILIES
    for family in first:
        p.jump(_JEQ_K, family, "allow")
    p.jump(_JEQ_K, last, "allow", "deny")
    p.label("socketpair")
    p.load(_ARG0_LO)
    p.jump(_JEQ_K, AF_UNIX, 0, "deny")
    p.load(_ARG1_LO)
    p.and_(SOCK_TYPE_MASK)
    p.jump(_JEQ_K, SOCK_DGRAM, "deny", "allow")
    p.label("allow")  # classic BPF jumps only forward: the shared exits come last
    p.ret(_RET_ALLOW)
    p.label("deny")
    p.ret(deny)
    return p.assemble()
