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
TS_GEN_DIR := client-ts/src/gen
DESCRIPTORS := server/zstack_gateway/descriptors.binpb
LISTEN ?= 127.0.0.1:50051

.PHONY: run test gen check-gen lint typecheck buflint pytest pytest-pure bench bench-quick soak soak-quick venv node clean

run: $(STAMP)
	$(BIN)/zstack-gateway --demo --listen $(LISTEN)

test: $(STAMP) $(NODE_STAMP) check-gen lint typecheck buflint breaking deploy-check pytest pytest-pure

venv: $(STAMP)
# The install also compiles the translator (setup.py: server/zstack_gateway/_wire.pyx) where a C
# compiler is present; without one the gateway runs its pure-Python path.
$(STAMP): pyproject.toml requirements.lock setup.py server/zstack_gateway/_wire.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=23"
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

node: $(NODE_STAMP)
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Generated files, committed, all from protos/: the Python stubs in client/zstack/v1, the descriptor
# set the gateway serves through reflection (with the protos' comments: `grpcurl describe` shows
# them), and the TypeScript package's messages in client-ts/src/gen (buf.gen.yaml). `make gen`
# rewrites them; `make check-gen` (part of `make test`) regenerates them into a temporary
# directory and fails when a committed one differs, or when client-ts/src/gen has a file too many.
# $(call generate,ROOT) writes every generated file under ROOT as it lies in the checkout.
define generate
mkdir -p $(1)/$(GEN_DIR) $(1)/$(dir $(DESCRIPTORS)) && \
PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(1)/$(GEN_DIR) --grpc_python_out=$(1)/$(GEN_DIR) \
  --mypy_out=$(1)/$(GEN_DIR) --mypy_grpc_out=$(1)/$(GEN_DIR) \
  --include_imports --include_source_info --descriptor_set_out=$(1)/$(DESCRIPTORS) $(PROTOS) && \
PATH=$(CURDIR)/node_modules/.bin:$$PATH buf generate -o $(1)
endef

gen: $(STAMP) $(NODE_STAMP)
	$(call generate,.)

check-gen: $(STAMP) $(NODE_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(call generate,$$tmp) && \
	for f in $$(cd $$tmp && find $(GEN_DIR) $(DESCRIPTORS) -type f); do \
	  cmp -s "$$tmp/$$f" "$$f" || { echo "stale generated file: $$f (run 'make gen')"; exit 1; }; \
	done && \
	{ diff -r -q "$$tmp/$(TS_GEN_DIR)" "$(TS_GEN_DIR)" || { echo "stale generated TypeScript in $(TS_GEN_DIR) (run 'make gen')"; exit 1; }; } && \
	echo "generated files are fresh"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

buflint: $(NODE_STAMP)
	npx --no-install buf lint

pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests whose outcome depends on how images are translated, again on the pure-Python path
# (ZSTACK_GATEWAY_PURE=1; `pytest` above runs the compiled one where it is built).
PURE_TESTS := tests/test_wire.py tests/test_translate.py tests/test_java_dates.py tests/test_stream_chunks.py \
  tests/test_stream_memory.py tests/test_stream_arrival.py tests/test_gateway.py tests/test_hostile_errors.py
pytest-pure: $(STAMP) $(NODE_STAMP)
	ZSTACK_GATEWAY_PURE=1 $(BIN)/pytest -q $(PURE_TESTS)

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
