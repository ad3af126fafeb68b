# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv on first use.
# CPU by default: torch==2.13.0 is installed before anything that depends on torch, so pip
# never pulls the multi-GB CUDA build. GPU users: `make TORCH='torch==<cuda build>' ...` or
# manage their own environment (README).
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seqmodels-installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow test-transformers4 demo clean-venv

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

# The HF tests on the lowest supported transformers 4.x (pyproject: transformers>=4.49), installed with
# --no-deps into $(TRANSFORMERS4) and put first on PYTHONPATH, so the venv (transformers 5.x) is untouched.
# transformers 4.x needs huggingface_hub < 1.0, and the venv's datasets needs a newer hub: the last
# datasets release that imports with hub 0.x (and its httpx) come along.
TRANSFORMERS4 ?= .cache/transformers4
TRANSFORMERS4_PINS = transformers==4.49.0 tokenizers==0.21.4 huggingface_hub==0.36.0 datasets==4.8.5 httpx==0.28.1 httpcore==1.0.9

$(TRANSFORMERS4)/.installed: | $(STAMP)
	rm -rf $(TRANSFORMERS4)
	$(PY) -m pip install -q --no-deps --target $(TRANSFORMERS4) $(TRANSFORMERS4_PINS)
	touch $@

test-transformers4: $(TRANSFORMERS4)/.installed
	PYTHONPATH=$(abspath $(TRANSFORMERS4)) $(PY) -c "import transformers; assert transformers.__version__ == '4.49.0', transformers.__file__"
	PYTHONPATH=$(abspath $(TRANSFORMERS4)) $(VENV)/bin/pytest tests/hf tests/test_padding.py tests/test_lm_eval.py $(PYTEST_ARGS)

# The venv's `deepspeed` launcher (a venv made with --system-site-packages has no script of its
# own: then the same launcher as a module), on a free port (29500, the default, may be taken).
DEEPSPEED = $(if $(wildcard $(VENV)/bin/deepspeed),$(VENV)/bin/deepspeed,$(PY) -m deepspeed.launcher.runner)

demo: $(STAMP)
	$(DEEPSPEED) --num_gpus 1 --master_port $$($(PY) -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])") \
		recipes/pretrain.py --config recipes/configs/demo.yaml
	@echo "TensorBoard logs: runs/demo   view: $(VENV)/bin/tensorboard --logdir runs"
	@echo "HF export:        runs/demo/hf   sample: $(PY) recipes/generate.py --model runs/demo/hf"
	@echo "(a second 'make demo' resumes from runs/demo/checkpoints; rm -rf runs/demo to start over)"

clean-venv:
	rm -rf $(VENV)
