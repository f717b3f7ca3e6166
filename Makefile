# Two commands set up everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test chaos demo bench install clean-local

$(RUNTIME_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(DEV_STAMP)

## make run: the service on the embedded default (or on DATABASE_URL/REDIS_URL/KAFKA_BOOTSTRAP_SERVERS)
run: $(RUNTIME_STAMP)
	$(PY) app.py run

## make test: the whole suite against real PostgreSQL, Redis and Kafka (Tansu), with coverage
test: $(DEV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## make chaos: every chaos scenario against the running processes (docs/chaos.md), then schemathesis
## in full. CHAOS=short is CI's version (no schemathesis: make test runs it bounded); SEED=N replays a seed.
chaos: $(DEV_STAMP)
	$(PY) -m chaos $(if $(filter short,$(CHAOS)),--short) $(if $(SEED),--seed $(SEED))
ifneq ($(CHAOS),short)
	SCHEMATHESIS_EXAMPLES=100 SCHEMATHESIS_TIMEOUT_S=1800 $(PY) -m pytest --no-cov -n 0 --timeout=2000 \
	  tests/e2e/test_openapi_fuzz.py
endif

## make demo: play the channels against a running service (start `make run` first)
demo: $(RUNTIME_STAMP)
	$(PY) -m workers.demo
	@sleep 2; $(PY) app.py report

## make bench: the benchmarks under bench/
bench: $(DEV_STAMP)
	$(PY) -m bench.run_all

clean-local:
	rm -rf .local
