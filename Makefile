# Two commands: `make run` and `make test`.  Everything lives in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= var
STAMP  := $(VENV)/.installed

.PHONY: run test check install clean bench browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# An editable install in compat mode (a .pth entry for this directory): a
# plain PEP 660 editable install hides twisted/plugins/netshare_plugin.py
# from twistd, and a normal install would go stale as the sources change.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	@rm -rf build *.egg-info
	@touch $(STAMP)

install: $(STAMP)

# A local try-out: REGISTER is open (the server's default is closed).
run: $(STAMP)
	@test -d $(DATA) || $(VENV)/bin/netshare init --data $(DATA)
	@echo "make run: registration is open (anyone may REGISTER); the default is --registration closed"
	exec $(VENV)/bin/twistd --pidfile= -n netshare --data $(DATA) --registration open

# Lint, format check and type check first (seconds), then the suite.
test: $(STAMP) check browser
	$(PY) -m pytest

# The web interface is tested in real headless Chromium: Debian's chromium
# and chromium-driver packages, installed here when missing (as root, or
# with sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	    echo "make: installing chromium and chromium-driver (the web interface tests)"; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	    || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	         apt-get install -y -q chromium chromium-driver; }; \
	fi

check: $(STAMP)
	$(VENV)/bin/ruff check netshare tests bench twisted
	$(VENV)/bin/ruff format --check netshare tests bench twisted
	$(VENV)/bin/mypy

bench: $(STAMP)
	@echo "see bench/README.md"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
