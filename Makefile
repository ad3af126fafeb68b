# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv on first use.
# CPU by default: torch==2.13.0 is installed before anything that depends on torch, so pip
# never pulls the multi-GB CUDA build. GPU users: `make TORCH='torch==<cuda build>' ...` or
# manage their own environment (README).
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seqmodels-installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo clean-venv

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

# The venv's `deepspeed` launcher (a venv made with --system-site-packages has no script of its
# own: then the same launcher as a module).
DEEPSPEED = $(if $(wildcard $(VENV)/bin/deepspeed),$(VENV)/bin/deepspeed,$(PY) -m deepspeed.launcher.runner)

demo: $(STAMP)
	$(DEEPSPEED) --num_gpus 1 recipes/pretrain.py --config recipes/configs/demo.yaml
	@echo "TensorBoard logs: runs/demo   view: $(VENV)/bin/tensorboard --logdir runs"
	@echo "HF export:        runs/demo/hf   sample: $(PY) recipes/generate.py --model runs/demo/hf"
	@echo "(a second 'make demo' resumes from runs/demo/checkpoints; rm -rf runs/demo to start over)"

clean-venv:
	rm -rf $(VENV)
