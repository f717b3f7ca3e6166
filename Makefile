# Two commands set up everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: run test demo bench install clean-local

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

## make demo: play the channels against a running service (start `make run` first)
demo: $(RUNTIME_STAMP)
	$(PY) -m workers.demo
	@sleep 2; $(PY) app.py report

## make bench: the benchmarks under bench/
bench: $(DEV_STAMP)
	$(PY) -m bench.run_all

clean-local:
	rm -rf .local
