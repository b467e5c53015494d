"""Spindle's version, as installed (written into rollouts as `cli_version`, reported by `initialize`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    SPINDLE_VERSION = version("spindle")
except PackageNotFoundError:  # running from a source tree that was never installed
    SPINDLE_VERSION = "0+unknown"
