# The two commands of the README. Both create or refresh .venv and install what is needed.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build that lies on this disk; the unpinned name would pull CUDA.
	$(VENV)/bin/pip install -q "torch==2.13.0"
	$(VENV)/bin/pip install -q -e ".[data,text,serve,test]"
	touch $(STAMP)

.PHONY: venv demo test
venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/condiff demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=600 -n 2 tests
