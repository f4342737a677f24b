# Neural platform: one entry point for setup, tests, lint and benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := libs/neural_api/.generated
OIP_STUBS := libs/neural_api/.generated-oip
DSL_PARSER := libs/neural_dsl/.generated-parser
CLIENTS := .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed
OPENAPI := gateway/openapi.json
DOCS := gateway/docs/index.html
PROTOS := $(wildcard protos/neural/v1/*.proto)
# The web console (web/): its npm packages (stamp in node_modules: `npm ci` starts by removing
# it) and its build, which Envoy serves at / (gateway/console.py).
WEB_DEPS := web/node_modules/.installed
WEB_BUILD := web/dist/index.html
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null) \
	$(wildcard web/index.html web/vite.config.ts web/tsconfig*.json)

.PHONY: setup test test-fast lint bench bench-deps clean run demo diagram screenshot

setup: $(STAMP) $(STUBS) $(OIP_STUBS) $(DSL_PARSER) $(CLIENTS_STAMP) $(OPENAPI) $(DOCS) $(WEB_BUILD)

# Re-runs only when the dependency lists change, so `make setup` is cheap and idempotent.
$(STAMP): requirements.txt pyproject.toml libs/*/pyproject.toml
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	# Debian's Chromium, for the test that opens /docs headless (Playwright drives it; its own
	# browser downloads are never used).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt \
		-e libs/neural_dsl -e libs/neural_api -e libs/service_kit -e libs/neural_client -e .
	touch $(STAMP)

# Python stubs (importable as neural.v1) and the descriptor set Envoy's transcoder reads. The
# descriptor set also carries google.rpc's error details (no neural proto imports them), so the
# transcoder can print a BadRequest in a REST error body; it is a protoc run of its own, so no
# stub of them is generated beside googleapis-common-protos' own.
$(STUBS): $(PROTOS) $(STAMP)
	mkdir -p gateway
	$(PY) -m grpc_tools.protoc -Iprotos \
		-I$$($(PY) -c 'import site; print(site.getsitepackages()[0])') \
		--python_out=libs/neural_api --grpc_python_out=libs/neural_api --pyi_out=libs/neural_api \
		$(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos \
		-I$$($(PY) -c 'import site; print(site.getsitepackages()[0])') \
		--descriptor_set_out=gateway/neural_descriptor.pb --include_imports --include_source_info \
		$(PROTOS) google/rpc/error_details.proto google/rpc/status.proto
	touch $(STUBS)

# The Open Inference Protocol's stubs (package `inference`), from the descriptor KServe's wheel
# ships (downloaded once into .venv/cache); see scripts/oip_stubs.py.
$(OIP_STUBS): scripts/oip_stubs.py $(STAMP)
	$(PY) scripts/oip_stubs.py --cache $(VENV)/cache --out libs/neural_api
	touch $(OIP_STUBS)

# The DSL parser's lark cache beside its grammar (its name hashes the grammar and lark's and
# Python's versions), so a new process loads the parser instead of building it (~90 ms).
# PYTHONPATH: the image's build runs this before it installs the library.
$(DSL_PARSER): libs/neural_dsl/neural_dsl/grammar.lark libs/neural_dsl/neural_dsl/syntax.py $(STAMP)
	PYTHONPATH=libs/neural_dsl $(PY) -m neural_dsl.parser_cache
	touch $(DSL_PARSER)

# Outside clients of the model servers (tritonclient and KServe's V2 client need protobuf < 7,
# which the project's stubs cannot use): a venv of their own, which tests run as subprocesses.
$(CLIENTS_STAMP): requirements-clients.txt
	test -x $(CLIENTS)/bin/python || $(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS)/bin/python -m pip install --quiet -r requirements-clients.txt
	touch $(CLIENTS_STAMP)

# The REST API's OpenAPI document, generated from the descriptor set and its HTTP rules (never
# written by hand), and Swagger UI's files for /docs from the pinned swagger-ui-bundle; Envoy
# serves both itself (gateway/docs.py).
$(OPENAPI): $(STUBS) gateway/openapi.py
	$(PY) -m gateway.openapi --descriptor-set gateway/neural_descriptor.pb -o $(OPENAPI)

$(DOCS): $(STAMP) gateway/docs.py
	$(PY) -m gateway.docs gateway/docs

# The console's packages exactly as web/package-lock.json pins them (nodejs and npm from apt
# when missing; Vite needs Node 20.19 or later, which Debian 12's own nodejs is not: a
# NodeSource package then), then its build (type check, then Vite) into web/dist; the gateway
# lists web/dist's files when its configuration is rendered, so `make run` serves a new build.
$(WEB_DEPS): web/package-lock.json web/package.json
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a * 100 + b < 2019 ? 1 : 0)' \
		|| (echo "web/ needs Node >= 20.19, found $$(node --version)" >&2; exit 1)
	npm --prefix web ci --no-audit --no-fund --loglevel=error
	touch $(WEB_DEPS)

$(WEB_BUILD): $(WEB_DEPS) $(WEB_SOURCES)
	npm --prefix web run build
	touch $(WEB_BUILD)

lint: setup
	$(VENV)/bin/ruff check libs services scripts tests bench gateway
	$(VENV)/bin/ruff format --check libs services scripts tests bench gateway

test: lint
	npm --prefix web test
	$(PY) -m pytest

# The unit tests alone (no database, Redis, server process or browser), the console's (vitest)
# included: a quick check while editing.
test-fast: setup
	npm --prefix web test
	$(PY) -m pytest -m unit

bench: setup
	$(PY) bench/dsl_parse.py
	$(PY) bench/codegen.py
	$(PY) bench/grpc_overhead.py
	$(PY) bench/gateway.py
	$(PY) bench/tracker_ingest.py
	$(PY) bench/tracker_ingest.py --scale
	$(PY) bench/tracker_compare.py
	$(PY) bench/tracker_events.py
	$(PY) bench/training_overhead.py
	$(PY) bench/predict.py
	$(PY) bench/first_call.py
	$(PY) bench/web.py

# Optional baselines for bench/: the original Neural DSL, in a venv of its own (its
# distribution is also called neural-dsl, so it cannot share .venv with ours), MLflow, and
# KServe's model server (it needs protobuf < 7).
bench-deps:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet neural-dsl==0.2.9 plotly mlflow==3.17.2 \
		kserve==0.21.0 onnxruntime==1.32.0

# The whole local stack (Ctrl-C stops it); see scripts/run_stack.py for the settings it reads.
run: setup
	$(PY) scripts/run_stack.py

# compile -> train (live progress) -> track, against `make run`'s stack or one of its own.
demo: setup
	$(PY) scripts/demo.py

# docs/architecture.svg from its Graphviz source (Debian's graphviz, installed when missing);
# tests/test_architecture_diagram.py fails when the two disagree.
diagram:
	command -v dot >/dev/null || (apt-get update -qq && apt-get install -y -qq graphviz)
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg

# docs/images/console-run.png, the README's picture of the console: a small model trained on a
# stack of its own, its run page saved by Chromium (bench/web.py --screenshot).
screenshot: setup
	$(PY) bench/web.py --screenshot docs/images/console-run.png

clean:
	rm -rf $(VENV) .venv-bench $(CLIENTS) .pytest_cache .ruff_cache .hypothesis
	rm -rf web/node_modules web/dist
