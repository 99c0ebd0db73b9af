# Every target does its own set-up: a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install browser postgresql lint test unit integration demo demo-network screenshot bench bench-scale mutation clean

all: test

# compat editable mode: a PEP 660 editable install hides twisted/plugins from twistd.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

unit: $(STAMP)
	$(BIN)/trial tests.unit

# Debian's chromium for the browser test (tests/integration/test_web.py), installed when
# missing (as root, with apt-get). Without it the test is skipped, except under CI=true, where
# it fails.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	echo "make: chromium is not installed: the browser test will be skipped (failed under CI=true)"

# Debian's postgresql for the index's PostgreSQL tests (tests/integration/postgres.py starts a
# throwaway server on loopback), installed when missing (as root, with apt-get). Without it
# those tests are skipped, except under CI=true, where they fail.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
	echo "make: postgresql is not installed: its tests will be skipped (failed under CI=true)"

integration: $(STAMP) browser postgresql
	$(BIN)/pytest -q tests/integration

# Static checks, configured in pyproject.toml [tool.ruff] and setup.cfg [mypy]; any finding
# fails the build.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The static checks first; then each test runs once: trial for the unit tests,
# pytest(-twisted) for the integration tests.
test: lint unit integration

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m mirror.demo

# A mirror network: an origin, two serving tier-1 mirrors, a tier-2 mirror fetching a big
# file from all three at once (README, "Mirror network").
demo-network: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m mirror.network_demo

# The README's picture of the status page, taken by the browser test itself.
screenshot: $(STAMP) browser
	MIRROR_SCREENSHOT=$(CURDIR)/doc/status-page.png $(BIN)/pytest -q tests/integration/test_web.py -k chromium

# Issue 9's targets against rsync's daemon (about 20 minutes), and the million-file memory
# targets (ours only; each dataset generated, measured and deleted in turn). Both merge their
# figures into bench/results.json and rewrite bench/RESULTS.md.
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

bench-scale: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench --scale

# Mutation testing of paths.py, stats.py, wire/frames.py and mirror_server/receiver.py
# (configured in setup.cfg [mutmut]; survivors explained in tests/MUTATION.md). On demand only, not in make test: a few minutes
# on 2 cores. Starts from scratch each time (mutmut's cache would keep old verdicts after a
# test changed); fails when a module scores under MUTATION_MIN percent.
MUTATION_MIN ?= 95
MUTATION_CHILDREN ?= 2
$(VENV)/.mutation-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,mutation]' --config-settings editable_mode=compat
	touch $@

mutation: $(VENV)/.mutation-installed
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) > mutants.log 2>&1 \
		|| { tail -c 2000 mutants.log; exit 1; }
	$(BIN)/mutmut results --all true | $(BIN)/python tests/mutation_score.py $(MUTATION_MIN)

clean:
	rm -rf mutants mutants.log $(VENV) build *.egg-info _trial_temp .pytest_cache twisted/plugins/dropin.cache demo-work
