# Fresh machine: `make demo` or `make test` create .venv, install (torch pinned first), and run.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SOUL    = $(VENV)/bin/soul
STAMP   = $(VENV)/.installed-stamp
RECIPE ?= recipes/tofu_sophia.yaml

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(SOUL) finetune --recipe $(RECIPE)
	$(SOUL) unlearn --recipe $(RECIPE) --overwrite

test: install
	$(VENV)/bin/pytest

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf runs .soul bench/out
