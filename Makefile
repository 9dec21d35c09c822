# Two commands do all set-up on a fresh machine with Python 3.10+:
#   make demo   -- the whole method on the embedded synthetic default, offline
#   make test   -- the test suite (under ten minutes on two cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: install test test-slow demo bench bench-ray docs clean

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m slow

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo_output

bench: $(STAMP)
	$(BIN)/python bench/extract.py

bench-ray: $(STAMP)
	$(BIN)/python bench/distributed.py

docs: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	$(BIN)/mkdocs build -q -d site

clean:
	rm -rf demo_output site build *.egg-info .pytest_cache
