"""Turning a finished request into one usage record: `meter` (exactly one record
per request, on every way out) and `tokens` (local counts with tiktoken, when
the upstream reported none)."""
