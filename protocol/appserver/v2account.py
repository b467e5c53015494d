"""The account methods on the app-server wire: `account/read` and the experimental
`account/bedrock/checkGovCloudRequirements`."""

from __future__ import annotations

from typing import Any, Literal

from .v2base import Inbound, Wire


class GetAccountParams(Inbound, kw_only=True, frozen=True):
    refresh_token: bool | None = None
    """Ask for a token refresh first: Spindle holds no token to refresh, so it changes nothing."""


class ApiKeyAccount(Wire, kw_only=True):
    """An account that authenticates with an API key (its value is never sent)."""

    type: Literal["apiKey"] = "apiKey"


class GetAccountResult(Wire, kw_only=True):
    account: ApiKeyAccount | None
    requires_openai_auth: bool
    user_id: str | None = None
    workspace_routing: Any = None


class BedrockCheckGovCloudParams(Inbound, kw_only=True, frozen=True):
    pass


class BedrockCheckGovCloudResult(Wire, kw_only=True):
    is_gov_cloud: bool
    should_warn: bool
