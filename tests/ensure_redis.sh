#!/usr/bin/env bash
# Makes sure a Redis answers on 127.0.0.1:6379 before the suite runs (the
# cross-machine limit tests use it, under a key prefix of their own). Starts
# one if none answers and redis-server is installed. In CI (CI=true) a Redis
# that still does not answer fails the run loudly; elsewhere those tests skip.
set -uo pipefail
ping() {
    if command -v redis-cli >/dev/null; then
        redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG
    else
        "${PYTHON:-python3}" -c 'import redis,sys; sys.exit(0 if redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping() else 1)' 2>/dev/null
    fi
}
if ping; then exit 0; fi
if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
fi
if [ "${CI:-}" = "true" ]; then
    echo "ensure_redis: no Redis answers on 127.0.0.1:6379 and none could be started" >&2
    exit 1
fi
echo "ensure_redis: no Redis on 127.0.0.1:6379: the Redis tests will skip" >&2
exit 0
