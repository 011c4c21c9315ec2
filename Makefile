# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: deps system-deps lint test run stop migrate migrate-dry-run psql snapshot bench send-test-event demo backup-drill

deps: system-deps $(VENV)/.installed

system-deps:
	@scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

lint: deps
	$(VENV)/bin/sqlfluff lint --disable-progress-bar sql/

test: deps lint
	$(VENV)/bin/pytest

run: deps
	HOST=$(HOST) PORT=$(PORT) scripts/run.sh

stop:
	scripts/cluster.sh stop

# Apply migrations, repeatables and cron schedules to DATABASE_URL (a second run changes nothing).
migrate:
	@test -n "$(DATABASE_URL)" || { echo "usage: make migrate DATABASE_URL=postgresql://..." >&2; exit 2; }
	sql/migrate.sh "$(DATABASE_URL)"

migrate-dry-run:
	@test -n "$(DATABASE_URL)" || { echo "usage: make migrate-dry-run DATABASE_URL=postgresql://..." >&2; exit 2; }
	sql/migrate.sh --dry-run "$(DATABASE_URL)"

psql:
	psql "$$(scripts/cluster.sh url)"

# The whole payment flow, printed step by step (embedded cluster, localstripe, a shim).
demo: deps
	$(VENV)/bin/python scripts/demo.py

# Dump the embedded database (or DATABASE_URL), restore it into a fresh cluster, check it.
backup-drill: deps
	$(VENV)/bin/python scripts/backup_drill.py $(if $(DATABASE_URL),"$(DATABASE_URL)")

send-test-event:
	scripts/send-test-event.sh

# Benchmarks (not part of make test): each prints its figures beside a baseline measured in the same run.
bench: deps
	@BENCH=1 scripts/install-system-deps.sh
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(VENV)/bin/python -m tests.bench.holds_bench
	$(VENV)/bin/python -m tests.bench.bookings_bench
	$(VENV)/bin/python -m tests.bench.ingest_bench
	$(VENV)/bin/python -m tests.bench.webhook_bench
	$(VENV)/bin/python -m tests.bench.queue_bench
	$(VENV)/bin/python -m tests.bench.console_bench

# Rewrite sql/schema.sql from the embedded cluster's migrated database.
snapshot:
	scripts/snapshot.sh "$$(scripts/cluster.sh url)" > sql/schema.sql
