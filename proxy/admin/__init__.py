"""`/admin/*`, behind `PROMETHEUS_ADMIN_KEY`: `api` (keys and usage over HTTP)."""
