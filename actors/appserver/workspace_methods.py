"""Handlers of `skills/list`, `hooks/list` and `plugin/installed`.

Spindle loads no skills, runs no hooks and installs no plugins (the config keys that configure
them in Codex are accepted and not used), so each answer is the empty one, shaped as Codex's:
one entry per directory asked about, each with no skills or hooks and no errors.
"""

from __future__ import annotations

import os

from spindle.protocol.appserver import v2workspace as wire

from .context import RequestContext, loaded, thread_id_param


def _cwds(ctx: RequestContext, cwds: list[str] | None) -> list[str]:
    """The directories asked about: none means the server's session cwd (the one a new thread
    gets); a relative one is taken from it."""
    session = os.path.abspath(ctx.manager.config.cwd or os.getcwd())
    if not cwds:
        return [session]
    return [cwd if os.path.isabs(cwd) else os.path.normpath(os.path.join(session, cwd)) for cwd in cwds]


async def skills_list(ctx: RequestContext, params: wire.SkillsListParams) -> wire.SkillsListResult:
    return wire.SkillsListResult(data=[wire.SkillsListEntry(cwd=cwd) for cwd in _cwds(ctx, params.cwds)])


async def hooks_list(ctx: RequestContext, params: wire.HooksListParams) -> wire.HooksListResult:
    """With `threadId`: the loaded thread's cwd; else each of `cwds`."""
    if params.thread_id is not None:
        cwds = [loaded(ctx, thread_id_param(params.thread_id)).settings.cwd]
    else:
        cwds = _cwds(ctx, params.cwds)
    return wire.HooksListResult(data=[wire.HooksListEntry(cwd=cwd) for cwd in cwds])


async def plugin_installed(ctx: RequestContext, params: wire.PluginInstalledParams) -> wire.PluginInstalledResult:
    return wire.PluginInstalledResult()
