"""From an alias to a deployment: `router` (is the alias known, allowed for this
key, of the right kind), `health` (circuit breakers per deployment, and the order
to try them in), `breaker` (one breaker's states) and `failover` (calling them in
that order, with retries, until one takes the request)."""
