# Each target sets itself up on a fresh machine: it creates .venv and installs the project.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean redis-server chromium compile c-compiler

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	TAGENGINE_COMPILE=0 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The push's hot path compiled to C with mypyc (setup.py, README "Compiled hot path"), in
# place, whenever a source of the package changed since the last build (engine/_hot.py keeps
# a digest): until then the sources run, never an older build.
compile: $(STAMP) c-compiler
	@$(BIN)/python -c "import sys, engine._hot as h; sys.exit(not h.current())" || { \
		echo "compiling the hot path (mypyc)"; \
		$(BIN)/python setup.py --quiet build_ext --inplace >$(VENV)/compile.log 2>&1 || \
			{ cat $(VENV)/compile.log; exit 1; }; \
		$(BIN)/python -c "import sys, engine._hot as h; sys.exit(not h.current())" || \
			{ cat $(VENV)/compile.log; echo "the hot path did not compile"; exit 1; }; }

c-compiler:
	@command -v cc >/dev/null || { \
		echo "installing gcc (Debian package) to compile the hot path"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null; }
	@$(BIN)/python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
		echo "installing the Python headers (Debian package) to compile the hot path"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null; }

# The Redis stores are tested against a real server (Debian's package), started by the tests.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server (Debian package) for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The browser test (tests/test_browser.py) drives Debian's Chromium with Playwright (the `test`
# extra; no browser download) through pages that use the Adobe Client Data Layer from npm.
TEST_STAMP := $(VENV)/.installed-test
NPM_STAMP  := tests/web/node_modules/.installed

$(TEST_STAMP): $(STAMP)
	TAGENGINE_COMPILE=0 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(TEST_STAMP)

chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium (Debian package) for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(NPM_STAMP): tests/web/package.json tests/web/package-lock.json
	@command -v npm >/dev/null || { \
		echo "installing nodejs and npm (Debian packages) for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd tests/web && npm ci --no-audit --no-fund --loglevel=error >/dev/null
	touch $(NPM_STAMP)

# The main job: check the rules, run their tests, replay the example journeys through them and
# deliver every send to the local emulator (a fresh machine has no Adobe or Sitecore account).
demo: $(STAMP) compile
	$(BIN)/tagengine check rules/
	$(BIN)/tagengine test rules/
	$(BIN)/tagengine run --rules rules/ --emulator examples/*.jsonl

test: $(STAMP) $(TEST_STAMP) redis-server chromium $(NPM_STAMP) compile
	$(BIN)/ruff check engine tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/pytest -q
	@echo "again, the hot path run as Python (TAGENGINE_PURE=1): the same results"
	TAGENGINE_PURE=1 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP) compile
	TAGENGINE_COMPILE=0 $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.runtime
	$(BIN)/python -m benchmarks.floor
	$(BIN)/python -m benchmarks.dispatch
	$(BIN)/python -m benchmarks.startup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/web/node_modules build engine/_hot.json
	find engine -name '*.so' -delete
