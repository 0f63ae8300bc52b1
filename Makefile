# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then train a small CLIP on the synthetic set and write outputs/demo/
#   make test   set up .venv, then run ruff and the whole test suite; then the tests that touch
#               Colab's own versions (ipywidgets 7, transformers 4.x) again with those versions
#               overlaid on .venv (.venv-colab, from requirements-colab.txt)
# Set-up installs requirements*.txt with the exact versions of constraints.txt (a matching
# torch/torchvision pair), then the course package itself (`pip install -e .`), so that scripts,
# benches and tests import `utils` from anywhere. On Colab, use `pip install -r requirements.txt`
# instead (see README).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COLAB_OVERLAY := .venv-colab
COLAB_STAMP := $(COLAB_OVERLAY)/.installed
# What Colab's versions could break: Hugging Face's CLIP, tokenizers, the widgets, and every
# notebook's Colab branch.
COLAB_TESTS := tests/test_backbones.py tests/test_segmentation.py tests/test_tokenization.py \
	tests/test_explorer.py tests/test_standalone.py tests/test_colab_notebooks.py
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

$(COLAB_STAMP): requirements-colab.txt $(STAMP)
	rm -rf $(COLAB_OVERLAY)
	$(PY) -m pip install -q --no-deps --target $(COLAB_OVERLAY) -r requirements-colab.txt
	touch $(COLAB_STAMP)

demo: $(STAMP)
	$(PY) -m utils.course.demo --out outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check utils tests bench notebooks scripts

test: lint $(COLAB_STAMP)
	$(PY) -m pytest
	PYTHONPATH=$(COLAB_OVERLAY) $(PY) -c "import transformers, ipywidgets; print('Colab-like \
	versions: transformers', transformers.__version__, 'ipywidgets', ipywidgets.__version__)"
	PYTHONPATH=$(COLAB_OVERLAY) $(PY) -m pytest -p no:cacheprovider $(COLAB_TESTS)

bench: $(STAMP)
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf outputs .pytest_cache .ruff_cache $(COLAB_OVERLAY)
