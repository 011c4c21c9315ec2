# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: deps system-deps lint test fuzz run stop ha-run ha-stop migrate migrate-dry-run psql snapshot bench send-test-event demo backup-drill

deps: system-deps $(VENV)/.installed

system-deps:
	@scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# sqlfluff (SQL style), squawk (migrations a DBA would refuse: .squawk.toml), plpgsql_check
# (every PL/pgSQL body, in a throwaway cluster: scripts/lint_plpgsql.py).
lint: deps
	$(VENV)/bin/sqlfluff lint --disable-progress-bar sql/
	@echo "squawk: sql/migrations/*.sql; the files already applied are excluded by name in .squawk.toml"
	$(VENV)/bin/squawk --config .squawk.toml --no-error-on-unmatched-pattern 'sql/migrations/*.sql'
	$(VENV)/bin/python scripts/lint_plpgsql.py

test: deps lint
	$(VENV)/bin/pytest

# The fuzzers of tests/fuzz with many more examples than make test gives them (issue 12);
# prints, per api function, the calls tried, the errors by SQLSTATE and the findings (must be 0).
FUZZ_EXAMPLES ?= 500
FUZZ_HTTP_EXAMPLES ?= 200
fuzz: deps
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_HTTP_EXAMPLES=$(FUZZ_HTTP_EXAMPLES) $(VENV)/bin/pytest tests/fuzz -q -s

run: deps
	HOST=$(HOST) PORT=$(PORT) scripts/run.sh

stop:
	scripts/cluster.sh stop

# The same on a high-availability formation: Patroni, etcd, a primary and two standbys
# (one synchronous) on 127.0.0.1, each node on its own port; `make ha-stop` stops it.
ha-run: deps
	HOST=$(HOST) PORT=$(PORT) scripts/ha-run.sh

ha-stop:
	scripts/ha.sh stop

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
# Every benchmark, twice (tests/bench/run_all.py), then each figure that has a goal beside
# the other run's; BENCH_ONLY=holds_bench,webhook_bench for some of them. Not part of make test.
bench: deps
	@BENCH=1 scripts/install-system-deps.sh
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(VENV)/bin/python -m tests.bench.run_all $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

# Rewrite sql/schema.sql from the embedded cluster's migrated database.
snapshot:
	scripts/snapshot.sh "$$(scripts/cluster.sh url)" > sql/schema.sql
