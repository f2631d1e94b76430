#!/usr/bin/env bash
# What the tests need outside Python: Postgres answering on 127.0.0.1:5432 (database `test`;
# the tests create and drop a database of their own in it), started from the local Debian
# cluster when it is down, and the redis-server program: the tests start their own Redis on a
# free loopback port (no persistence) and stop it afterwards, so no Redis has to be running.
# With QUARRY_TEST_REDIS_URL set (a Redis the tests may flush, e.g. redis://127.0.0.1:6379/5)
# that Redis must answer instead. Exit 1 if something is missing.
set -uo pipefail
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
ok=0
if pg_up; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null \
    | grep -q 1 || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || true
  echo "PostgreSQL: up"
else
  echo "PostgreSQL: DOWN"; ok=1
fi
if [[ -n "${QUARRY_TEST_REDIS_URL:-}" ]]; then
  if redis-cli -u "${QUARRY_TEST_REDIS_URL}" ping 2>/dev/null | grep -q PONG; then
    echo "Redis: ${QUARRY_TEST_REDIS_URL} answers (QUARRY_TEST_REDIS_URL)"
  else
    echo "Redis: ${QUARRY_TEST_REDIS_URL} (QUARRY_TEST_REDIS_URL) does not answer"; ok=1
  fi
elif command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]]; then
  echo "Redis: redis-server installed (the tests start their own)"
else
  echo "Redis: redis-server MISSING (apt-get install redis-server)"; ok=1
fi
exit $ok
