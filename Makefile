# meshfed — two commands do all the set-up on a fresh machine:
#   make demo   local hub + 3 members (real kube-apiservers, istiod + gateway Envoy each), BIND, internal CA,
#               controller, deploy/examples, an HTTPS request through a VIP, a staged change (make demo-down)
#   make test   lint, type checks, unit, integration (one real API server) and e2e (local fleet) tests
#   make image  the container image as an OCI archive (no registry, no container engine; image/build.sh)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
FLEET_DIR ?= $(CURDIR)/.fleet
DEBIAN_PACKAGES := bind9 bind9-utils bind9-dnsutils pdns-server pdns-backend-sqlite3 pebble chromium chromium-driver
IMAGE_PACKAGES := mmdebstrap umoci
export MESHFED_FLEET_DIR := $(FLEET_DIR)

.PHONY: deps python-deps debian-deps apiserver test lint unit integration e2e demo demo-down crds bench clean \
	image image-deps image-lock image-test

deps: python-deps debian-deps apiserver

$(VENV)/.installed: pyproject.toml
	@echo "==> Python dependencies into $(VENV) (python: $(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --progress-bar off -e '.[dev]' | grep -E "^(Successfully|ERROR)" || true
	@$(PY) -c "import kopf, kubernetes_asyncio, pydantic" && touch $@

python-deps: $(VENV)/.installed

debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "==> Debian packages present: $(DEBIAN_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null && echo "    done"; \
	else echo "==> missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing); DNS/ACME tests will fail until then"; fi

apiserver: python-deps
	@echo "==> kube-apiserver, istiod (pilot-discovery) and pilot-agent from Go modules (cached after the first build)"
	@$(PY) -m cli.main fleet build

lint: python-deps
	@echo "==> ruff"; $(VENV)/bin/ruff check federation accesspoint placement nameservice certs fleet cli dashboard tests e2e
	@echo "==> mypy --strict"; $(VENV)/bin/mypy
	@echo "==> import contracts (pyproject.toml [tool.importlinter])"; set -o pipefail; $(VENV)/bin/lint-imports --no-cache | sed -n "/^Contracts$$/,$$ p"

unit: python-deps
	@$(VENV)/bin/pytest -q tests/unit

integration: deps
	@$(VENV)/bin/pytest -q tests/integration

e2e: deps
	@$(VENV)/bin/pytest -q -m "not image" e2e

test: deps lint
	@echo "==> tests (unit, integration, e2e)"
	@$(VENV)/bin/pytest -q -p no:cacheprovider -m "not image" tests e2e

# The container image (README: "Container image"): build/image/meshfed-VERSION.oci.tar, its OCI layout
# build/image/oci and digest; the Debian base is cached in ~/.cache/meshfed/image.
image-deps:
	@missing=""; for p in $(IMAGE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "==> Debian packages present: $(IMAGE_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then echo "==> apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null && echo "    done"; \
	else echo "==> missing Debian packages:$$missing (make image runs as root: sudo make image)"; exit 1; fi

image: python-deps image-deps
	@nice bash image/build.sh

image-lock: python-deps
	@$(PY) image/lock.py

# The controller from the image against a local fleet, in-cluster configuration (e2e/test_image.py).
image-test: image apiserver
	@echo "==> image test (e2e/test_image.py)"
	@$(VENV)/bin/pytest -q -p no:cacheprovider -m image e2e/test_image.py

crds: python-deps
	@$(PY) -m cli.main crds --out deploy/crds

demo: deps
	@bash e2e/demo.sh

demo-down:
	@$(PY) -m cli.main fleet down --dir $(FLEET_DIR)

bench: deps
	@for b in e2e/bench/*.py; do m=$$(basename $$b .py); echo "==> python -m e2e.bench.$$m"; $(PY) -m e2e.bench.$$m || exit 1; done

clean: demo-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
