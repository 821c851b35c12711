# The two commands (README): `make demo` and `make test`. Each sets everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

setup: $(STAMP)

models: $(STAMP)
	$(VENV)/bin/livemod models prepare

demo: models
	$(VENV)/bin/livemod demo

test: models
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache out
