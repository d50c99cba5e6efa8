#!/bin/sh
# Make sure the PostgreSQL the cluster tests use (127.0.0.1:5432) answers.
# `make test` runs it before pytest. Not running: try to start the local
# cluster (Debian's pg_ctlcluster). Under CI (CI=true) a server that still
# does not answer fails the run loudly; elsewhere those tests skip, saying why.
set -u
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null 2>&1 && ready; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    done
    for _ in 1 2 3 4 5 6 7 8 9 10; do ready && exit 0; sleep 1; done
fi
if [ "${CI:-}" = "true" ]; then
    echo "postgres-ready: no PostgreSQL on 127.0.0.1:5432; the cluster tests need it in CI" >&2
    exit 1
fi
echo "postgres-ready: no PostgreSQL on 127.0.0.1:5432; the cluster tests will skip" >&2
exit 0
