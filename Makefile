# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/science

.PHONY: demo test lint data bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned resolver would fetch a CUDA build of several GB
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[data,hf,dev,tensorboard,mlflow]'
	touch $(STAMP)

data:
	@test -f $(FMNIST) && test -f $(FORTUNES) || { \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist fortunes fortunes-min >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) apt-get install -y -q dataset-fashion-mnist fortunes fortunes-min >/dev/null; }; }

demo: $(STAMP) data
	$(VENV)/bin/lifelong demo

test: $(STAMP) data
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/lifelong
	$(PY) -m pytest -n 2 --durations=15

bench: $(STAMP) data
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
