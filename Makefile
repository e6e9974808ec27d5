# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch for machines without a GPU: a few hundred MB instead of several GB of
# CUDA wheels. Found on this project's machines' local wheel cache, else on PyTorch's CPU index.
TORCH_CPU     ?= torch==2.13.0+cpu
TORCH_CPU_URL ?= https://download.pytorch.org/whl/cpu
FMNIST_DEB    := /usr/share/datasets/fashion-mnist
DEMO_OUT      ?= runs/fmnist-demo

.PHONY: install data demo test lint clean package-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, so that the package's range (torch>=2.1,<3) is already satisfied: a user's own
# torch (e.g. a CUDA build) is kept, and a GPU-less machine never downloads CUDA wheels.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install "torch>=2.1,<3"; \
	else \
		$(BIN)/pip install "$(TORCH_CPU)" || $(BIN)/pip install "$(TORCH_CPU)" --extra-index-url $(TORCH_CPU_URL); \
	fi
	$(BIN)/pip install -e ".[eval,data,test,analyze,tensorboard]"
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: the Debian package when root on Debian, else ancra downloads it on first use.
data:
	@if [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FMNIST_DEB)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) \
		|| echo "apt-get failed: ancra will download Fashion-MNIST instead"; \
	else \
		echo "Fashion-MNIST: not installed system-wide; ancra downloads it on first use"; \
	fi

# The main job on the embedded default: ANCRA-TRADES on Fashion-MNIST (about 7-8 minutes on 2
# CPU cores), then the standard suite on the first 1000 test images and the adaptive suite on the
# first 500 (quick budgets, labelled as such in the reports). Re-running resumes / reuses the run.
demo: install data
	@if [ -f $(DEMO_OUT)/state.pt ] || [ -f $(DEMO_OUT)/config.json ]; then \
		$(BIN)/ancra train --resume $(DEMO_OUT); \
	else \
		$(BIN)/ancra train --config configs/fmnist-demo.toml --out $(DEMO_OUT); \
	fi
	$(BIN)/ancra eval $(DEMO_OUT)/best.pt --suite standard --quick --n-examples 1000 --out $(DEMO_OUT)/eval-standard
	$(BIN)/ancra eval $(DEMO_OUT)/best.pt --suite adaptive --quick --n-examples 500 --out $(DEMO_OUT)/eval-adaptive
	@$(BIN)/python -c "import json; s, a = (json.load(open('$(DEMO_OUT)/eval-' + k + '/report.json')) for k in ('standard', 'adaptive')); \
	print('\nANCRA-TRADES on Fashion-MNIST, L-inf eps 0.1 (quick evaluation budgets)'); \
	print(f\"  clean accuracy       {100 * s['clean_acc']:6.2f}%   (first {s['n_examples']} test images)\"); \
	print(f\"  PGD-20 accuracy      {100 * s['attacks']['pgd-20']['acc']:6.2f}%\"); \
	print(f\"  AutoAttack accuracy  {100 * s['autoattack_acc']:6.2f}%\"); \
	print(f\"  adaptive worst case  {100 * a['worst_case_acc']:6.2f}%   (first {a['n_examples']} test images)\")"
	@echo "run: $(DEMO_OUT)  (metrics.jsonl, best.pt, eval-standard/report.md, eval-adaptive/report.md)"

test: install data lint
	$(BIN)/python -m pytest

# ruff (pinned in the test extra): lint and the formatting check, configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# sdist + wheel, installed into a clean venv that runs `ancra --help`, eval and verify (uses the
# package registry, so not part of `make test`)
package-check: install
	bash scripts/check_package.sh

clean:
	rm -rf $(VENV) runs
