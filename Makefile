# Two commands on a fresh machine (Python 3.11+): `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("msante needs Python 3.11 or later") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,fast]'
	touch $@

run: $(STAMP)
	@[ -d var ] || $(BIN)/msante init --demo
	$(BIN)/msante serve

test: $(STAMP)
	$(BIN)/pytest -q -ra

bench: $(STAMP)
	$(BIN)/python bench/directory.py
	$(BIN)/python bench/instant.py
	$(BIN)/python bench/imap.py

clean:
	rm -rf $(VENV) var .pytest_cache test-artifacts
