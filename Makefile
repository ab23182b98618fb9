# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fimbound-installed

.PHONY: install demo test test-heavy bench clean

# adv-lib (the attack ensemble) imports visdom, whose sdist imports pkg_resources at build
# time: setuptools < 81 for build environments only (pip >= 25.3 has --build-constraint).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=25.3'
	echo 'setuptools<81' > $(VENV)/build-constraints.txt
	$(PY) -m pip install --quiet --build-constraint $(VENV)/build-constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fimbound demo

# One pytest worker per core (pytest-xdist), one torch thread each: the suite is thousands
# of tiny problems, where a second thread per process only adds contention.
TEST_WORKERS ?= auto
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake -n $(TEST_WORKERS) --dist worksteal

# The opt-in heavy tier: Monte-Carlo estimators and the large soundness sweeps.
test-heavy: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbmake -n $(TEST_WORKERS) --dist worksteal \
		-m "montecarlo or slow"

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
