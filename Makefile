# Two commands on a fresh machine (Python 3.11+): `make run` and `make test`.
# Both install the exact versions of requirements-lock.txt (tested, with hashes); pyproject.toml
# keeps the ranges msante supports. `make upgrade` re-resolves the lock within those ranges.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements-lock.txt
UV     := .tools/bin/uv
UV_VERSION := 0.13.9

.PHONY: run test bench upgrade clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit("msante needs Python 3.11 or later") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check >/dev/null || { $(BIN)/pip check; echo "$(LOCK) does not match pyproject.toml: run 'make upgrade'"; exit 1; }
	touch $@

run: $(STAMP)
	@[ -d var ] || $(BIN)/msante init --demo
	$(BIN)/msante serve

test: $(STAMP)
	$(BIN)/pytest -q -ra --durations=25

bench: $(STAMP)
	$(BIN)/python bench/directory.py
	$(BIN)/python bench/instant.py --sqlite --workers 1 --clients 1 --connections 2000  # the embedded default; issue 13: no options
	$(BIN)/python bench/imap.py

# The lock: uv's resolver writing pip's requirements format (hashes, markers for every platform),
# so installing needs nothing but the venv's own pip; uv itself is only needed here.
$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet 'uv==$(UV_VERSION)'

upgrade: $(UV)
	$(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV) pip compile --quiet --upgrade --universal --python-version 3.11 --generate-hashes \
	      --extra test --extra fast --custom-compile-command 'make upgrade' -o $(LOCK) pyproject.toml -
	@echo "$(LOCK) refreshed: run 'make test' before committing it"

clean:
	rm -rf $(VENV) .tools var .pytest_cache test-artifacts
