# Two commands do all set-up on a fresh machine with Python 3.10+:
#   make demo   -- the whole method on the embedded synthetic default, offline
#   make test   -- the test suite (under ten minutes on two cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: install test test-slow demo bench bench-ray docs clean

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# includes the strict documentation build with the examples gallery (tests/test_docs_build.py)
test-slow: $(STAMP) $(DOCS_STAMP)
	$(BIN)/python -m pytest -q -ra -m slow

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo_output

bench: $(STAMP)
	$(BIN)/python bench/extract.py

bench-ray: $(STAMP)
	$(BIN)/python bench/distributed.py

# The site in site/ (Material for MkDocs; API reference by mkdocstrings; examples gallery by
# mkdocs-gallery, every example run at small settings). --strict: a broken link or cross-reference,
# a public name without a docstring or reference entry, or a failing example stops the build.
# CXR_EMBED_DOCS_EXAMPLES=false make docs: the pages without running the examples (a quick look).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -q -d site

clean:
	rm -rf demo_output site docs/generated build *.egg-info .pytest_cache
