"""From an alias to a deployment: `router` (is the alias known, allowed for this
key, of the right kind; the order to try its deployments in) and `failover`
(calling them in that order until one takes the request)."""
