# `make demo` and `make test` create .venv on first use (CPU torch first, then the package).
# Elsewhere than this project's machines, get the CPU wheel with:
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck doctest docs venv benchmarks install-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev,nni]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lightning-nas demo

# lint and format check and the type check first, then the docstring examples, then the suite
test: lint typecheck doctest
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy on lightning_nas/ ([tool.mypy] in pyproject.toml)
typecheck: $(VENV)/.installed
	$(PY) -m mypy

# the `>>>` examples in the package's docstrings (each well under a second, nothing written into the checkout)
doctest: $(VENV)/.installed
	$(PY) -m pytest -q --doctest-modules lightning_nas

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

# the documentation site into site/ (mkdocs.yml; offline, every warning an error)
docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict

# the wheel, installed with its core dependencies only into a fresh venv (in a temp folder), runs README's quick start
install-check:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" bash .ci/install_check.sh

benchmarks: $(VENV)/.installed
	for f in benchmarks/[a-z]*.py; do echo "== $$f"; PYTHONPATH=. $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info lightning_logs wandb nas_runs site
