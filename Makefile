# Every target does its own set-up: a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install test unit integration demo bench clean

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

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

# Each test runs once: trial for the unit tests, pytest(-twisted) for the integration tests.
test: unit integration

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m mirror.demo

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache twisted/plugins/dropin.cache demo-work
