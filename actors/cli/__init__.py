"""The `spindle` command: entry point (`main`), logging set-up, signals, the app-server on stdio, `spindle load`, the demo and the REPL helpers."""
