# latentforge: `make run` (the main job on its embedded default) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp records a finished install; it is redone only when the lock or setup.py changes.
STAMP := $(VENV)/.latentforge-installed

# The quick start: the chapter's stacked autoencoder on the bundled 2,500 digits, 30 epochs of batch 8 (6,720
# steps, ~0.25 s an epoch: validation MSE 0.0144, against 0.0193 after 8 epochs and 0.0141 after 60, where it
# overfits; 5 epochs of 32 left an 8 as a blob), about 50 s on 2 cores, most of it start-up of TF, Beam and Ray.
# Another MODEL trains with its own preset's epochs and batch size unless EPOCHS / BATCH_SIZE are given.
SOURCE ?= idx:data/mnist-sample
MODEL ?= stacked_ae
ifeq ($(origin MODEL),file)
EPOCHS ?= 30
BATCH_SIZE ?= 8
endif
WORKERS ?= 1
RUN_DIR ?= runs
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: install browser run test test-fast benchmark benchmark-generative benchmark-serving clean

install: $(STAMP)

# uv installs the lock in ~35 s where pip takes ~2.5 min (parallel downloads and unpacking, same 346 packages,
# `pip check` clean); pip does it when uv cannot. uv writes no bytecode unless asked, and where
# PYTHONDONTWRITEBYTECODE is set (this machine's environment sets it) Python writes none on import either: every
# process would compile Beam, TFX and MLflow again (~4 CPU-s each). So it is compiled once, here (~25-50 s).
UV ?= uv==0.13.9

$(STAMP): requirements.txt constraints.txt setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q "$(UV)" \
	  && $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -r requirements.txt -c constraints.txt \
	  || $(BIN)/pip install --disable-pip-version-check --ignore-requires-python -r requirements.txt -c constraints.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@# rfc3987-syntax comes only through jupyter-events' jsonschema[format-nongpl] extra; installed, jsonschema
	@# compiles its 39 Lark grammars at import: 5.5 s in every process that imports Ray (the driver and each
	@# worker). Nothing here validates URI formats; `pip check` stays clean without it.
	$(BIN)/pip uninstall --disable-pip-version-check -y -q rfc3987-syntax
	@touch $@

run: install
	$(BIN)/latentforge run --source $(SOURCE) --model $(MODEL) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) --workers $(WORKERS) --run-dir $(RUN_DIR)

# Two test processes on 2 cores, whole modules each (their fixtures start Rays and servers once). A third overlapped
# some waiting but no faster overall, and its load made servers and Ray heads miss their start-up deadlines.
# TEST_WORKERS=0: one process.
test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 -rs $(PYTEST_ARGS) tests

# The explorer's browser tests drive Debian's chromium through chromedriver (no browser can be downloaded):
# installed here when missing and this is root (CI); otherwise they say how and skip.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	      || echo "apt-get could not install chromium/chromedriver: the browser tests skip"; \
	  else echo "chromium/chromedriver missing: sudo apt-get install chromium chromium-driver (browser tests skip)"; fi; }

# The inner loop: every test that starts no Ray, no server and no whole pipeline (marked slow).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 $(PYTEST_ARGS) tests

# Not run by CI: speed, quality and Ray overhead on the real MNIST (../shared/datasets/mnist), ~50 min on 2 cores;
# generative.py (FID/KID of VAE, DCGAN, WGAN-GP, DDPM: hours on 2 cores) and serving_load.py (~10 min) apart.
benchmark: install
	cd benchmarks && ../$(BIN)/python speed.py && ../$(BIN)/python quality.py && ../$(BIN)/python ray_overhead.py

benchmark-generative: install
	cd benchmarks && ../$(BIN)/python generative.py

benchmark-serving: install
	cd benchmarks && ../$(BIN)/python serving_load.py

clean:
	rm -rf $(RUN_DIR) .pytest_cache
