# vmcrypt — two commands: `make up` runs the system, `make test` runs every test.
# Both create .venv and install pinned dependencies (requirements-dev.lock) on first use,
# and install the Debian packages the tests need when they are missing (chromium drives
# the web UI tests through Playwright; no browser is downloaded).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: up demo test lint typecheck pytest bench sysdeps sysdeps-bench clean help

help:
	@echo "make up      run the whole system on this machine (KMS, control plane, 3 hosts, web UI)"
	@echo "make demo    the key server and disk data path demo (scripts/demo-disk)"
	@echo "make test    lint, type-check and run every test (installs what it needs)"
	@echo "make bench   run the benchmarks under bench/ and print ratios"

$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@scripts/ensure-system-packages cryptsetup-bin:/usr/sbin/cryptsetup libcrypto++-utils:/usr/share/crypto++/TestVectors/xts.txt openssl:/usr/bin/openssl chromium:/usr/bin/chromium 'postgresql:/usr/lib/postgresql/*/bin/initdb'

sysdeps-bench:
	@scripts/ensure-system-packages qemu-utils:/usr/bin/qemu-img openssl:/usr/bin/openssl

up: $(STAMP)
	@$(PY) -m vmcrypt.cli.main up --data-dir vmcrypt-data

demo: $(STAMP)
	@scripts/demo-disk $(PY)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) sysdeps
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup -q

test: lint typecheck pytest

bench: $(STAMP) sysdeps-bench
	$(PY) bench/disk_throughput.py
	$(PY) bench/kms.py
	$(PY) bench/control.py
	$(PY) bench/trust.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
