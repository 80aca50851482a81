# Fresh machine: `make demo` or `make test` create .venv, install (torch pinned first), and run.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SOUL    = $(VENV)/bin/soul
STAMP   = $(VENV)/.installed-stamp
RECIPE ?= recipes/tofu_sophia.yaml
# the demo: the recipe's GradDiff with AdamW and with SophiaG side by side, each selected step
# by the recipe's keep-best rule (utility >= 0.95 x the target's), then a 10-step relearning
# attack on each (bench/bench_demo.py runs and times the same two commands)
DEMO_ARGS = --optimizers adamw,sophiag --set compare.include_influence=false \
	--set compare.utility_ratio=0.95 --attacks relearn --set 'attack.relearn.steps=[0,10]'

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(SOUL) finetune --recipe $(RECIPE)
	$(SOUL) compare-optimizers --recipe $(RECIPE) $(DEMO_ARGS) --output runs/demo

test: install
	$(VENV)/bin/pytest

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf runs .soul bench/out
