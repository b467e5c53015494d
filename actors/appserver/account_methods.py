"""Handlers of the account methods: `account/read` and `account/bedrock/checkGovCloudRequirements`.

Spindle signs in to nothing. Its model requests carry the configured provider's API key, read
from the environment variable the provider names (`env_key`); it reads no `auth.json`, has no
ChatGPT login and no Bedrock credentials. The answers say exactly that, and never a key's value.
"""

from __future__ import annotations

import os

from spindle.protocol.appserver import v2account as wire

from .context import RequestContext


async def account_read(ctx: RequestContext, params: wire.GetAccountParams) -> wire.GetAccountResult:
    """An `apiKey` account when the configured provider names an API key variable and the server's
    environment sets it; no account otherwise (a provider that needs no key, such as a local one,
    or a key not set: a turn then fails naming the variable). `requiresOpenaiAuth` is false:
    Spindle takes no OpenAI login, so a client has no sign-in to offer."""
    config = ctx.manager.config
    provider = config.all_providers().get(config.model_provider)
    has_key = provider is not None and provider.env_key is not None and bool(os.environ.get(provider.env_key))
    return wire.GetAccountResult(account=wire.ApiKeyAccount() if has_key else None, requires_openai_auth=False)


async def bedrock_check_gov_cloud(
    ctx: RequestContext, params: wire.BedrockCheckGovCloudParams
) -> wire.BedrockCheckGovCloudResult:
    """Experimental. Spindle has no Bedrock authentication, so none resolves to GovCloud."""
    ctx.peer.handshake.require_experimental("account/bedrock/checkGovCloudRequirements")
    return wire.BedrockCheckGovCloudResult(is_gov_cloud=False, should_warn=False)
