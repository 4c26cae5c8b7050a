# Everything runs inside .venv, created and filled from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
# the unit tests and the notebooks run on JOBS pytest-xdist workers, each torch process with the cores shared out
# (two workers of one thread on 2 cores: 7 min instead of 12-14 for the unit tests; two workers of two threads each
# on 2 cores ran the notebooks slower than one worker)
JOBS    ?= 2
THREADS := $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(JOBS))); echo $$((t > 0 ? t : 1)))

.PHONY: demo test unit notebooks book lab student wheel toy toy-sd toy-llava bench bench-sd bench-llava bench-widgets bench-real browser-test compare strip lock clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## the main job on the built-in toy world
demo: $(STAMP)
	$(PY) -m slugkit demo --out runs/demo --overwrite

## unit tests, every notebook executed with nbmake, the book built from them, the browser tests
test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest tests -q -n $(JOBS) --durations=15
	$(MAKE) book
	$(MAKE) browser-test

## every notebook executed once (nbmake) on a copy in runs/notebooks/: the outputs the book shows
notebooks: $(STAMP)
	rm -rf runs/notebooks && mkdir -p runs/notebooks && cp notebooks/*.ipynb runs/notebooks/
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest runs/notebooks --nbmake --nbmake-timeout=1200 --overwrite -q \
	  -p no:cacheprovider --durations=0 -n $(JOBS)

## the offline HTML book in runs/book/ (Sphinx + MyST-NB, alabaster theme): executed notebooks + docs/ pages
book: notebooks
	$(PY) scripts/build_book.py --notebooks runs/notebooks --out runs/book

unit: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest tests -q -n $(JOBS) --durations=15

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## coursework: the notebooks without their reference answers (cells tagged "solution") in runs/student/
student: $(STAMP)
	$(PY) -m slugkit notebooks runs/student --student --overwrite

## the wheel (checkpoints, bench outputs and notebooks inside) in dist/; build/ is setuptools' scratch folder
wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps --disable-pip-version-check -w dist .
	rm -rf build

## notebook 04 in JupyterLab + headless Chromium (move the λ slider; screenshots in runs/browser/), and every
## page of the built book (screenshots in runs/book-shots/); run `make book` first
## (installs Debian's chromium when missing and we are root; never downloads a browser build)
browser-test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "browser-test: /usr/bin/chromium is missing; install it with: sudo apt-get install -y chromium"; fi; \
	fi
	$(PY) -m pytest browser_tests -q -rs -p no:cacheprovider

## how live the explorers feel: median/max update times of the step-size slider and the layer heatmap
bench-widgets: $(STAMP)
	$(PY) scripts/bench_widgets.py

## `slugkit unlearn` on a random ViT-B-32 and 600 MiniCanvas pictures from a CSV (built in runs/bench-real):
## seconds per stage and per step-size evaluation, peak memory, as JSON
bench-real: $(STAMP)
	$(PY) scripts/bench_real.py --out runs/bench-real

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

## SLUG vs GA, FT, GA+FT, SalUn, SSD on 3 characters, a style, an object (+ 3 characters at once)
compare: $(STAMP)
	$(PY) -m slugkit bench --model toy-clip --out runs/bench

## remove outputs from every notebook (tests fail on stored outputs)
strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

## re-pin requirements-lock.txt from the current venv
lock:
	$(PY) -m pip freeze --all --exclude-editable | grep -vE '^(pip|slugkit)==' > requirements-lock.txt

clean:
	rm -rf $(VENV) runs .pytest_cache

## toy Stable Diffusion: rebuild the judge + VAE + UNet; measure SLUG on twelve concepts, both searches (runs/sd-bench)
toy-sd: $(STAMP)
	$(PY) -m slugkit toy build sd

bench-sd: $(STAMP)
	for search in clip generation; do $(PY) scripts/bench_sd.py --search $$search --out runs/sd-bench/$$search \
	  --concepts "Captain Zorp" "Glimmer Queen" "Mira Quell" star circle moon heart \
	  Checkerboard Stripes "Polka Dots" Grid Solid || exit 1; done
