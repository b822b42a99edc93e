# One-command entry points. Each target sets up .venv itself when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# FHIR.js, the independent R4 validator the tests use (node and npm from the system packages)
FHIRJS := tools/fhir-validator/node_modules/.installed-stamp
AS_OF ?= 2026-11-02T09:00:00Z

.PHONY: example test test-fast lint bench bench-speed docs clean base-install-check chromium pango postgres

SETUP_LOG := $(VENV)/setup.log

# The build log goes to $(SETUP_LOG), not the terminal; on failure its path and tail are shown.
# The editable install compiles the hot modules in place (setup.py, mypyc): a change to a
# module of cds or fhir_adapters installs again (~2 min), so the tests and benchmarks run
# what ships.
$(STAMP): pyproject.toml setup.py mypyc.ini $(wildcard cds/*.py fhir_adapters/*.py)
	@echo "setting up $(VENV) (log: $(SETUP_LOG))"
	@$(PY) -m venv $(VENV)
	@( $(BIN)/python -m pip install --upgrade pip \
	   && $(BIN)/python -m pip install -e '.[dev,service,handout,population]' ) > $(SETUP_LOG) 2>&1 \
	   || { tail -n 30 $(SETUP_LOG); echo "set-up failed: the whole log is $(SETUP_LOG)" >&2; exit 1; }
	@touch $(STAMP)

$(FHIRJS): tools/fhir-validator/package-lock.json
	@command -v npm >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	@cd tools/fhir-validator && npm ci --silent --no-audit --no-fund
	@touch $(FHIRJS)

# Headless Chromium for the tests that render pages (tests/browser.py), from the system packages
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Pango (and a font) for WeasyPrint, the 'handout' extra's PDF printer, from the system packages
pango:
	@ldconfig -p | grep -q 'libpangoft2-1.0.so.0' && fc-list 2>/dev/null | grep -q . \
	  || { apt-get update -qq && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 \
	       fonts-dejavu-core >/dev/null; }

# PostgreSQL's server binaries (initdb, pg_ctl) for the shared-store tests, from the system
# packages; the tests start a throwaway cluster of their own (tests/service/pg_cluster.py)
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

## Evaluate the bundled example patient: readable plan on the terminal, FHIR in out/.
example: $(STAMP)
	$(BIN)/movement-cds evaluate examples/example-patient.json --as-of $(AS_OF) \
		--out out/example-careplan.json

## Lint, type-check (mypy strict) and run the test suite, in two processes (pytest-xdist):
## about 5 minutes on two cores instead of about 9 (many tests wait on servers and clusters).
test: $(STAMP) $(FHIRJS) chromium pango postgres lint
	$(BIN)/python -m pytest -n 2 --durations=15

## The core of the suite while you work (no slow tests: service start-ups, browsers,
## clusters, the authoring guide); `make test` (CI) runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

## The library without extras, as an integrator installs it: build the wheel, install it in a
## fresh venv (no extras), import every library module, run the README's Python example and
## `movement-cds evaluate` and `kb validate` (~3 min: the build compiles the hot modules). CI runs it.
base-install-check:
	.ci/base_install_check.sh $(PY)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports  # the package layers ([tool.importlinter] in pyproject.toml)
	$(BIN)/movement-cds kb validate --strict

## Rebuild the generated clinical catalog in docs/clinical from the knowledge base.
docs: $(STAMP)
	$(BIN)/movement-cds kb docs

## Benchmarks (figures, not pass/fail): see docs/performance.md.
bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

## Issue 15's table in one run: engine, output, cold start, each a ratio measured side by side.
bench-speed: $(STAMP)
	$(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache build
	find . -name '*.so' -not -path './tools/*' -delete  # the extensions compiled in place
