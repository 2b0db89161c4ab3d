# Every target creates .venv when it is missing and installs the project into it,
# so each works on a fresh machine that has only python3 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
STAMP := $(VENV)/.installed

.PHONY: demo test lint pytest bench install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/connbridge-gateway --demo --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check connbridge gateway tests bench
	$(BIN)/ruff format --check connbridge gateway tests bench
	$(BIN)/mypy connbridge gateway

pytest: $(STAMP)
	$(BIN)/python -X dev -m pytest -p no:cacheprovider

test: lint pytest

# A bounded, bigger fuzz run than the one in make test: Schemathesis with all its
# checks, FUZZ_EXAMPLES requests per operation and mode, and FUZZ_PAYLOADS random
# $-tagged payloads (tests/gateway/test_payload_fuzz.py). About 2 minutes on 2 cores.
FUZZ_EXAMPLES ?= 300
FUZZ_PAYLOADS ?= 3000
.PHONY: fuzz
fuzz: $(STAMP)
	CONNBRIDGE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CONNBRIDGE_FUZZ_PAYLOADS=$(FUZZ_PAYLOADS) \
		$(BIN)/python -X dev -m pytest -p no:cacheprovider -s \
		tests/gateway/test_schemathesis.py tests/gateway/test_payload_fuzz.py

# Issue 12's promises at their full durations (make test runs each for a few
# seconds): the poison test 60 s x 4, the classic server under 5 minutes of
# load, starvation over 60 s, kill -9 x 20. About 12 minutes; -rP prints each
# run's figures.
.PHONY: soak
SOAK_TESTS := tests/gateway/test_hostile_backends.py tests/gateway/test_fragile_server.py
soak: $(STAMP)
	CONNBRIDGE_SOAK=1 $(BIN)/python -X dev -m pytest -p no:cacheprovider -rP $(SOAK_TESTS)

# The bench also needs wrk, which it installs with apt-get when missing and
# run as root. BENCH_QUICK=1 make bench is a smoke run; bench/README.md lists
# every knob.
bench: $(STAMP)
	$(BIN)/python -m bench

# openapi/openapi.json: the document of the app built from the example settings
# in gateway/openapi_file.py; tests/gateway/test_openapi.py fails when it is stale.
# test-browser drives /docs in headless Chromium (apt-get install -y chromium chromium-driver).
.PHONY: openapi test-browser
openapi: $(STAMP)
	$(BIN)/connbridge-gateway openapi openapi/openapi.json

# The README's tables of configuration keys, from the settings models
# (gateway/config_table.py); tests/gateway/test_config_table.py fails when they are stale.
.PHONY: config-table
config-table: $(STAMP)
	$(BIN)/python -m gateway.config_table README.md

test-browser: $(STAMP)
	CONNBRIDGE_BROWSER=1 $(BIN)/python -X dev -m pytest -p no:cacheprovider -m browser tests/browser

# test-clients generates a TypeScript client (openapi-typescript, default options,
# compiled with tsc --strict) and a Python client (openapi-python-client) from the
# document a real gateway serves and from openapi/openapi.json, and calls the gateway
# with both (tests/gateway/test_generated_clients.py). Needs node and npm; the pinned
# generators go under build/clients (npm there, and a virtualenv of their own).
OPENAPI_TYPESCRIPT ?= 7.13.0
TYPESCRIPT ?= 5.9.3
OPENAPI_PYTHON_CLIENT ?= 0.29.1
CLIENT_TOOLS := build/clients
CLIENT_STAMP := $(CLIENT_TOOLS)/.installed-$(OPENAPI_TYPESCRIPT)-$(TYPESCRIPT)-$(OPENAPI_PYTHON_CLIENT)
.PHONY: test-clients
$(CLIENT_STAMP):
	mkdir -p $(CLIENT_TOOLS)/node
	npm install --prefix $(CLIENT_TOOLS)/node --no-audit --no-fund --save-exact \
		openapi-typescript@$(OPENAPI_TYPESCRIPT) typescript@$(TYPESCRIPT)
	test -x $(CLIENT_TOOLS)/venv/bin/python || $(PYTHON) -m venv $(CLIENT_TOOLS)/venv
	$(CLIENT_TOOLS)/venv/bin/python -m pip install --quiet openapi-python-client==$(OPENAPI_PYTHON_CLIENT)
	touch $@

test-clients: $(STAMP) $(CLIENT_STAMP)
	CONNBRIDGE_CLIENTS=1 CONNBRIDGE_CLIENT_TOOLS=$(abspath $(CLIENT_TOOLS)) \
		$(BIN)/python -X dev -m pytest -p no:cacheprovider -m clients tests/gateway/test_generated_clients.py

# Builds the image and runs the gateway in it; needs root, podman, buildah and
# mmdebstrap (apt-get install -y podman buildah mmdebstrap).
.PHONY: container-test
container-test: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/container-test.sh

# The long versions of tests/gateway/test_clients.py (hostile clients): 60 s
# ping and call floods, 20,000 WebSocket attempts, a minute of slowloris under
# 1,024 descriptors; prints what it measured (about 6 minutes).
.PHONY: soak-clients
soak-clients: $(STAMP)
	CONNBRIDGE_SOAK_CLIENTS=1 $(BIN)/python -X dev -m pytest -p no:cacheprovider -s tests/gateway/test_clients.py
