# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then train a small CLIP on the synthetic set and write outputs/demo/
#   make test   set up .venv, then run ruff and the whole test suite
# Set-up installs requirements*.txt with the exact versions of constraints.txt (a matching
# torch/torchvision pair), then the course package itself (`pip install -e .`), so that scripts,
# benches and tests import `utils` from anywhere. On Colab, use `pip install -r requirements.txt`
# instead (see README).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m utils.course.demo --out outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check utils tests bench notebooks scripts

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf outputs .pytest_cache .ruff_cache
