#!/usr/bin/env bash
# Installs the Debian packages the project needs when they are missing:
# PostgreSQL 15 with pg_cron and plpgsql_check, pgbouncer for the pooler tests, and the small tools the scripts use.
set -euo pipefail
PGBIN=/usr/lib/postgresql/15/bin
missing=()
[[ -x $PGBIN/postgres ]] || missing+=(postgresql-15)
[[ -f /usr/lib/postgresql/15/lib/pg_cron.so ]] || missing+=(postgresql-15-cron)
# `make lint` checks every PL/pgSQL body with it (in a throwaway cluster; never in the migrations).
[[ -f /usr/lib/postgresql/15/lib/plpgsql_check.so ]] || missing+=(postgresql-15-plpgsql-check)
command -v psql >/dev/null || missing+=(postgresql-client-15)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# The versioned-cache test and bench start their own Redis (tests/cache/test_catalog_cache_redis.py).
command -v redis-server >/dev/null || missing+=(redis-server)
# The console's browser test (tests/shim/test_console_browser.py) drives Debian's chromium.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# tests/e2e/test_pgbouncer.py runs the shim and the worker behind Debian's pgbouncer (1.18).
[[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
# The high-availability formation (make ha-run, the failover test and bench): Patroni with
# etcd. The failover test is part of make test, so CI installs them too.
command -v patroni >/dev/null || missing+=(patroni)
command -v etcd >/dev/null || missing+=(etcd-server)
# The HTTP load generator of `make bench` (BENCH=1): light enough not to compete with the shim.
[[ -z ${BENCH:-} ]] || command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]} == 0)); then exit 0; fi

echo "installing: ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "missing Debian packages: ${missing[*]}; install them (apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
# The project runs its own clusters: do not let the package create and start one.
"${sudo[@]}" mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
  echo 'create_main_cluster = false' | "${sudo[@]}" tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
# Nor any packaged daemon (etcd-server would start an etcd of its own on 127.0.0.1:2379):
# policy-rc.d answering 101 tells the packages' scripts not to start services.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
