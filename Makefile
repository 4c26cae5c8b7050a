# Everything runs inside .venv, created and filled from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: demo test unit notebooks lab toy toy-llava bench bench-llava strip lock clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## the main job on the built-in toy world
demo: $(STAMP)
	$(PY) -m slugkit demo --out runs/demo

## unit tests + every notebook executed with nbmake
test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=600 -q

unit: $(STAMP)
	$(PY) -m pytest tests -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## rebuild the shipped toy checkpoints in data/ from scratch
toy: $(STAMP)
	$(PY) -m slugkit toy build

## rebuild the toy LLaVA (projector + language model) in data/
toy-llava: $(STAMP)
	$(PY) -m slugkit toy build llava

## SLUG on the toy LLaVA for three characters: the VLM acceptance table
bench-llava: $(STAMP)
	$(PY) scripts/bench_llava.py

## SLUG on every toy character: the acceptance table
bench: $(STAMP)
	$(PY) scripts/bench_characters.py

## remove outputs from every notebook (tests fail on stored outputs)
strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

## re-pin requirements-lock.txt from the current venv
lock:
	$(PY) -m pip freeze --all --exclude-editable | grep -vE '^(pip|slugkit)==' > requirements-lock.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
