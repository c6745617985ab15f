# Set-up and entry points. `make demo`, `make rehearsal` and `make test` install into .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo rehearsal test test-all gpu-check clean-demo

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

# The real training path on real photos: preemption, resume, evaluation, rerun (scripts/rehearsal.py).
rehearsal: $(STAMP)
	$(PY) -m scripts.rehearsal --compare

test: $(STAMP)
	$(PY) -m pytest -q

# On a GPU: every CUDA-only path checked, then the speed figures (scripts/gpu_check.py; --budget-s caps its time).
# OFFICIAL=<checkout of the official FLatten-Transformer> adds the comparisons with the official code.
gpu-check: $(STAMP)
	$(PY) -m scripts.gpu_check $(if $(OFFICIAL),--official-path $(OFFICIAL))

# Slow tests too (big models at full size, long runs, the rehearsal).
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

clean-demo:
	rm -rf demo_data output/demo output/rehearsal
