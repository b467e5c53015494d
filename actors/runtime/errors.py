"""The errors a runtime's users see: each names what went wrong and with which thread or turn."""

from __future__ import annotations


class ThreadClosedError(Exception):
    """The thread has shut down and takes no more submissions."""


class ThreadNotFoundError(KeyError):
    """No running thread has this id."""

    def __str__(self) -> str:
        return f"thread not found: {self.args[0]}"


class TurnError(Exception):
    """A turn ended with an error event (the model failed, or the input was refused)."""


class TurnAbortedError(Exception):
    """A turn was interrupted before it finished."""


class ConfigError(ValueError):
    """A config file, override or key that cannot be used; the message names where it came from
    (file, `-c` or thread config), the key and the problem."""


class SandboxUnavailable(ConfigError):
    """A command's sandbox cannot be set up: its permissions cannot be realised (a root vanished,
    the profile is gone) or this machine cannot sandbox (no bubblewrap, no user namespaces). The
    command is refused with this message, never run unsandboxed; it says why and what to do."""
