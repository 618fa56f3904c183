# Two commands on a fresh machine:  make demo  (the main job)  and  make test  (the test suite).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.xailab-installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	bash scripts/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned: this version lies on the build machines' disk (no multi-GB download)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,reference,pretrained,distributed,modern]'
	# quantus (test-only reference) without its opencv-python: grad-cam's headless cv2 serves
	$(PY) -m pip install -q --no-deps quantus==0.6.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/xailab demo

# one process by default: on two pytest-xdist workers (XDIST="-n 2 --dist loadgroup", a module's tests
# and a document's examples grouped on one worker, tests/conftest.py) the suite takes ~6 min instead of
# ~19 but 9 tests still fail there (examples that read an earlier example's run, the fuzz count)
XDIST ?=

test: install
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 $(XDIST)

test-fast: install
	$(PY) -m pytest -q -x -m "not slow and not reference" $(XDIST)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
