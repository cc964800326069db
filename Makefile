# Each target sets itself up on a fresh machine: it creates .venv and installs the project.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean redis-server chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

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
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[dev,test]'
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
demo: $(STAMP)
	$(BIN)/tagengine check rules/
	$(BIN)/tagengine test rules/
	$(BIN)/tagengine run --rules rules/ --emulator examples/*.jsonl

test: $(STAMP) $(TEST_STAMP) redis-server chromium $(NPM_STAMP)
	$(BIN)/ruff check engine tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.runtime
	$(BIN)/python -m benchmarks.floor
	$(BIN)/python -m benchmarks.dispatch
	$(BIN)/python -m benchmarks.startup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/web/node_modules
