"""Thin handlers for `/v1/*` and `/healthz`, one module per endpoint family;
`proxy.server.app` wires them. Each validates its body, resolves the alias
(`proxy.routing`), calls the upstream, and relays the reply under a `Meter`."""
