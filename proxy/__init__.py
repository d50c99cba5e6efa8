"""Prometheus Gateway: a self-hosted, OpenAI-compatible LLM gateway.

A request's way reads top to bottom through the rooms: `http` (middleware),
`auth` (the key), `api` (the handler), `routing` (alias -> deployment),
`providers` (the upstream call), `metering` (the usage record) and `usage`
(journal, SQLite, reports). Set-up lives in `config`, `server` and `cli`.
"""

__version__ = "0.1.0"
