"""Test helpers, shipped so `spindle load` and embedders can use them: the mock Responses API model and a JSON-RPC client for the app-server. The runtime and the app-server never import them."""
