# The two commands a newcomer needs: `make run` and `make test`. Everything else is set-up they do
# by themselves on a fresh machine (Python 3.11, Node/npm).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PROTOS := $(wildcard protos/zstack/v1/*.proto)
GEN_DIR := client
LISTEN ?= 127.0.0.1:50051

.PHONY: run test gen check-gen lint typecheck buflint pytest bench bench-quick soak soak-quick venv node clean

run: $(STAMP)
	$(BIN)/zstack-gateway --demo --listen $(LISTEN)

test: $(STAMP) $(NODE_STAMP) check-gen lint typecheck buflint breaking deploy-check pytest

venv: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=23"
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

node: $(NODE_STAMP)
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Generated Python stubs live in client/zstack/v1 and are committed; `make gen` rewrites them from
# protos/, and `make check-gen` (part of `make test`) fails when the committed ones are stale.
gen: $(STAMP)
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) $(PROTOS)

check-gen: $(STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	for f in $$(cd $$tmp && find . -type f); do \
	  cmp -s "$$tmp/$$f" "$(GEN_DIR)/$$f" || { echo "stale generated stub: $(GEN_DIR)/$$f (run 'make gen')"; exit 1; }; \
	done && echo "generated stubs are fresh"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

buflint: $(NODE_STAMP)
	npx --no-install buf lint

pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# The soak: 20,000 mixed calls at concurrency 64, then checks that nothing leaked (RSS, fds, tasks).
soak: $(STAMP)
	$(PY) bench/soak.py

soak-quick: $(STAMP)
	$(PY) bench/soak.py --quick

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

# `buf breaking` (buf.yaml's FILE rules) against the previous commit. Skipped, saying so, where there is
# none to compare with: the first commit, or a shallow clone.
breaking: $(NODE_STAMP)
	@if git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null && git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null; then \
	  echo "buf breaking against HEAD~1 ($$(git log -1 --format='%h %s' HEAD~1 | cut -c1-72))"; \
	  npx --no-install buf breaking --against '.git#ref=HEAD~1'; \
	else \
	  echo "buf breaking: skipped, no previous commit with a buf.yaml (first commit or shallow clone)"; \
	fi

# deploy/: YAML, Kubernetes schemas and cross-checks, the Dockerfile (deploy/check.js), and
# kubernetes-validate's strict schema check, which also rejects unknown fields.
deploy-check: $(STAMP) $(NODE_STAMP)
	node deploy/check.js
	$(BIN)/kubernetes-validate --strict --quiet $$(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
	@echo "deploy-check: kubernetes-validate --strict passed"

.PHONY: breaking deploy-check
