# The two commands of the README:
#   make demo   create .venv, install, run the main job (a real valuation end to end)
#   make test   create .venv, install test extras and the memcached server, run the suite
#               (prints its wall time and the 20 slowest tests)
#   make test-long   the tests marked long (full-size notebooks, ...); CI runs it after make test
#   make docs   build the API reference and guides into site/ (warnings are errors)
#   make notebooks   execute the notebooks in place: their committed outputs and figures are what the docs show
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dvl-dask-installed
PYTEST_ARGS ?=
# pytest-xdist: three worker processes on two cores, one test file per worker at a time (module-scoped
# fixtures such as the CLI cluster start once; a file's tests keep their order). Most of the slow tests
# wait (child processes, sleeps, servers, clusters), so a third worker fills the cores. XDIST= runs serially.
XDIST ?= -n 3 --dist loadfile
# Tests marked serial (timing claims) run after the parallel phase, in one process: only their files are collected.
SERIAL_FILES = $(shell grep -rl --include='test_*.py' 'pytest.mark.serial' tests)
# The long tests are few and in three files (four full-size notebooks, three resumes, one batched exact
# Shapley): spread them by test (the notebooks one after another on one worker made it 197 s, not 148 s).
XDIST_LONG ?= -n 2 --dist load

.PHONY: demo test test-long lint docs notebooks bench pictures install memcached-server clean

install: $(STAMP)

# torch is pinned to the range that resolves to the local CPU wheel; installing it
# first keeps pip from looking at multi-GB CUDA builds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch>=2.2,<2.14"
	$(BIN)/python -m pip install --quiet -e ".[all,test,dev,docs]"
	touch $(STAMP)

# The memcached *server* is a system package; tests start their own instances.
memcached-server:
	@if command -v memcached >/dev/null 2>&1; then \
		echo "memcached: $$(command -v memcached)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
		echo "installing memcached with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null; \
	else \
		echo "memcached is not installed and apt-get is not usable: memcached tests will be skipped"; \
	fi

demo: $(STAMP)
	$(BIN)/dvl-dask demo

lint: $(STAMP)
	$(BIN)/ruff check dvl_dask tests benchmarks
	$(BIN)/lint-imports

# Wall time printed whether pytest passes or not; pytest's exit status is kept (5, "no test selected",
# is not a failure of the serial phase: PYTEST_ARGS may deselect every serial test).
test: $(STAMP) memcached-server lint
	start=$$(date +%s); status=0; \
	$(BIN)/python -m pytest $(XDIST) --serial=exclude --durations=20 $(PYTEST_ARGS) || status=$$?; \
	serial=0; $(BIN)/python -m pytest --serial=only --durations=5 $(PYTEST_ARGS) $(SERIAL_FILES) || serial=$$?; \
	if [ $$serial -ne 0 ] && [ $$serial -ne 5 ]; then status=$$serial; fi; \
	echo "make test: wall time $$(( $$(date +%s) - start )) s"; exit $$status

test-long: $(STAMP) memcached-server
	start=$$(date +%s); status=0; \
	$(BIN)/python -m pytest $(XDIST_LONG) --run-long -m long --durations=20 $(PYTEST_ARGS) || status=$$?; \
	echo "make test-long: wall time $$(( $$(date +%s) - start )) s"; exit $$status

# mkdocs.yml + docs/_hooks.py: README as home page, docs/*.md guides, notebooks (not executed), API pages.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Execute the four notebooks at full size, in place: outputs and inline figures are committed with them
# (tests/test_notebooks_and_cli.py checks they are there; CI runs them at a smaller scale).
# nbconvert coalesces streams *before* it executes, so a second pass merges the progress bars' updates
# (one stream output per cell, carriage returns applied: the final state of each bar).
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 notebooks/*.ipynb
	$(BIN)/jupyter nbconvert --to notebook --inplace --coalesce-streams notebooks/*.ipynb

# Regenerate the README's pictures by running notebook 04 (writes docs/images/*.png).
pictures: $(STAMP)
	DVL_DASK_FIGURES=$(CURDIR)/docs/images $(BIN)/jupyter execute notebooks/04_compare_methods.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis values.zarr values.png site
