# The two commands of the README, and their set-up.
#
#   make demo    run the main job
#   make test    pass the tests
#
# Both first make sure libtorch is present: scripts/setup-libtorch.sh carves a CPU-only libtorch
# out of the PyPI torch wheel into .libtorch/ (once; later runs do nothing). Set LIBTORCH yourself
# (a CUDA libtorch, say) to skip it.

TORCH_VERSION := 2.11.0
LIBTORCH_STAMP := .libtorch/.complete-$(TORCH_VERSION)

ifeq ($(LIBTORCH),)
SETUP := $(LIBTORCH_STAMP)
else
SETUP :=
endif

.PHONY: demo test rehearsal test-rust test-python test-deploy test-lean test-deps setup bench lint fuzz fuzz-smoke

demo: $(SETUP)
	cargo run --release -- demo

test: test-rust test-python test-deploy test-lean

test-rust: $(SETUP) test-deps
	cargo test

# Debian packages the tests drive as real tools: prometheus and promtool (tests/metrics.rs), and
# chromium, the headless browser that loads the tree viewer (tests/viewer.rs).
TEST_PACKAGES := prometheus chromium

test-deps:
	@command -v prometheus > /dev/null && command -v promtool > /dev/null \
		&& command -v chromium > /dev/null || { \
		echo "installing Debian's $(TEST_PACKAGES) for tests/metrics.rs and tests/viewer.rs"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES) > /dev/null; }

# A real client in another language: Python grpcio stubs generated from proto/ talk to `hch up`;
# and pyarrow reads the Parquet training targets `hch train` writes.
# `cargo test --no-run` builds the binary with the same features as `cargo test` (dev-dependencies
# unify features), so after test-rust nothing is rebuilt.
test-python: $(SETUP) .venv/.ready
	cargo test --no-run --quiet
	.venv/bin/python tests/python/client_test.py $${CARGO_TARGET_DIR:-target}/debug/hch
	.venv/bin/python tests/python/targets_test.py $${CARGO_TARGET_DIR:-target}/debug/hch

# deploy/, validated offline (no cluster here): every overlay renders with kubectl kustomize and
# passes kubernetes-validate --strict, and hch accepts every container's arguments.
test-deploy: $(SETUP) .venv/.ready
	cargo test --no-run --quiet
	scripts/validate-deploy.sh .venv $${CARGO_TARGET_DIR:-target}/debug/hch

# The multi-host rehearsal: the deployment of deploy/ played with containers on a private Docker
# network (tests/rehearsal.rs). The images are built from debug binaries, which `make test` has
# already compiled; the containers get the arguments of the rendered cpu overlay.
rehearsal: $(SETUP) .venv/.ready
	PROFILE=debug scripts/images.sh
	DEPLOY_ARGS_JSON=$${CARGO_TARGET_DIR:-target}/deploy-args.json scripts/validate-deploy.sh .venv
	HCH_DEPLOY_ARGS=$${CARGO_TARGET_DIR:-target}/deploy-args.json \
		cargo test --test rehearsal -- --ignored --nocapture

# The build without libtorch (cargo feature `model` off: the coordinator's image, quick CLI use).
# It shares the target directory: only the hch crate is rebuilt, and target/debug/hch is then the
# lean binary until the next default build.
test-lean:
	cargo build --no-default-features --quiet
	scripts/check-lean.sh $${CARGO_TARGET_DIR:-target}/debug/hch

.venv/.ready:
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check grpcio grpcio-tools pyarrow
	touch $@

setup: $(SETUP)

bench: $(SETUP)
	cargo bench

# libFuzzer on every fuzz target (scripts/fuzz.sh): `make fuzz` for a minute each, `make
# fuzz-smoke` (CI) for a few seconds each, enough to catch a regression on the corpora.
fuzz: $(SETUP)
	scripts/fuzz.sh 60

fuzz-smoke: $(SETUP)
	scripts/fuzz.sh 10

lint: $(SETUP)
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	cargo clippy --all-targets --locked --no-default-features -- -D warnings

$(LIBTORCH_STAMP):
	scripts/setup-libtorch.sh
