"""The HTTP edge of every request: `middleware` (request id, auth call, error
shape, the log line), `bodies` (reading JSON bodies, writing JSON replies) and
`errors` (`GatewayError`, OpenAI's error shape)."""
