# make demo: the default recipe end to end (synth_en, Omni-router Conformer), on a CPU machine.
# make test: the test suite.
# Both create .venv when it is missing and install the package into it.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEBIAN_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
	sox libsox-fmt-all fortunes fortunes-min wordnet-base pocketsphinx-testdata
# Demo size (see README: expected time and results): 3 h of synthetic training audio, 8 epochs.
DEMO_OPTS ?= --local_data_opts "--train_hours 3 --dev_utts 200 --test_utts 150" --asr_args "--max_epoch 8" --nj 2 --inference_nj 2

.PHONY: test demo install sysdeps clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q "setuptools<74" wheel
	$(PYTHON) -m pip install -q -e ".[test,plot,onnx]"
	touch $@

# Debian packages that the synth_en corpus needs; installed when running as root and missing.
sysdeps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing Debian packages: $$missing (run: sudo apt-get install $$missing)"; exit 1; fi; \
	fi

test: install sysdeps
	$(PYTHON) -m pytest -q --durations=20 tests

demo: install sysdeps
	cd egs2/synth_en/asr1 && ./run.sh --python $(abspath $(PYTHON)) $(DEMO_OPTS)
	@cat egs2/synth_en/asr1/exp/*/RESULTS.md
