# memchannel: every target sets itself up on a fresh machine (Debian packages, a venv, the build).
#   make test                 C++ (ctest) and Python (pytest) tests, then `make sanitize`
#   make sanitize             the C++ tests under ASan+UBSan and TSan, canaries, arena fuzzing
#   make demo                 the main demo
#   make bench                side-by-side benchmarks against the peers
#   make soak                 random SIGKILLs and restarts for SOAK_SECONDS (default 3600), then leak checks
#   make test PYTHON=/root/.pyenv/versions/3.12.1/bin/python3   the same on another CPython

PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.13.*/bin/python3) $(shell command -v python3.13) $(shell command -v python3))
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The default interpreter (3.13) uses .venv; any other version gets its own .venv-X.Y.
VENV ?= $(if $(filter 3.13,$(PYVER)),.venv,.venv-$(PYVER))
VPY := $(VENV)/bin/python
BUILD := build/cpp-$(PYVER)
JOBS ?= $(shell nproc)
DEB_PACKAGES := libgtest-dev libboost-dev libbenchmark-dev clang-14 libclang-rt-14-dev
PYTEST_ARGS ?=

.PHONY: all deps venv install cpp test test-cpp test-python typecheck demo bench clean sanitize test-asan test-tsan test-fuzz soak

all: install

# Debian packages the build needs, installed only when missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.ready:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "pybind11>=3.1,<3.2" "scikit-build-core>=0.10" numpy pytest pytest-timeout matplotlib hypothesis mypy uvloop pyzmq
	touch $@

# Test packages added after a venv may have been made (the Dask tests' distributed, the asyncio
# tests' uvloop and pyzmq): installed into an existing venv too.
venv: $(VENV)/.ready
	@$(VPY) -c 'import distributed, uvloop, zmq' 2>/dev/null || $(VPY) -m pip install -q distributed uvloop pyzmq

# The Python package, built by scikit-build-core into a persistent build dir (incremental).
install: deps venv
	$(VPY) -m pip install -q --no-build-isolation --config-settings=build-dir=build/py-$(PYVER) \
	  --config-settings=cmake.define.MEMCHANNEL_WERROR=ON .

cpp: deps venv
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=$(abspath $(VPY)) \
	  -DMEMCHANNEL_BUILD_PYTHON=OFF -DMEMCHANNEL_TEST_HOOKS=ON -DMEMCHANNEL_WERROR=ON >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

test-cpp: cpp
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# pytest: every capability's tests, the docs examples, and the benchmark harness in smoke mode
# (every transport yields a row or a stated skip; no timings are asserted).
test-python: install typecheck
	$(VPY) -m pytest -q tests/python bench/test_bench_smoke.py $(PYTEST_ARGS)

test: test-cpp test-python sanitize

# The typing files (python/memchannel/py.typed, *.pyi): the docs examples and a typed use of the
# public API pass mypy, and stubtest checks the stubs against the installed package.
STUBBED := memchannel._memchannel memchannel._channel memchannel.queues memchannel.executor memchannel.compare memchannel.interpreters memchannel.sync
typecheck: install
	@$(VPY) -c 'import mypy' 2>/dev/null || $(VPY) -m pip install -q mypy
	$(VPY) -m mypy --cache-dir build/mypy-$(PYVER) docs/examples
	$(VPY) -m mypy --cache-dir build/mypy-$(PYVER) --strict tests/python/test_typed_api.py
	$(VPY) -m mypy.stubtest --allowlist tests/packaging/stubtest_allowlist.txt $(STUBBED)

# Sanitizer builds (docs/reliability.md, items 9 and 15), run by `make test`: only the C++ libraries,
# GoogleTests, canaries and fuzz target are built (no Python module, no benchmarks).
#   test-asan  core + shm GoogleTests under ASan+UBSan (UB aborts: -fno-sanitize-recover), the
#              canaries, and the fuzz corpus replayed through real segments plus a short
#              seeded mutation run (GCC, standalone driver)
#   test-tsan  the same GoogleTests under TSan, and its canary
#   test-fuzz  the arena fuzz target under clang's libFuzzer + ASan+UBSan for FUZZ_SECONDS
# Each canary plants the bug its sanitizer must catch and fails if no report appears.
SAN_BUILD ?= build
FUZZ_SECONDS ?= 60
STANDALONE_FUZZ_SECONDS ?= 15
FUZZ_CXX ?= clang++-14
SAN_CMAKE := -DMEMCHANNEL_BUILD_PYTHON=OFF -DMEMCHANNEL_BUILD_BENCH=OFF -DMEMCHANNEL_TEST_HOOKS=ON -DMEMCHANNEL_WERROR=ON
SAN_ENV := UBSAN_OPTIONS=print_stacktrace=1 TSAN_OPTIONS=second_deadlock_stack=1

sanitize: test-asan test-tsan test-fuzz

test-asan: deps
	cmake -S . -B $(SAN_BUILD)/asan -DMEMCHANNEL_SANITIZE=address,undefined $(SAN_CMAKE) \
	  -DMEMCHANNEL_FUZZ_ENGINE=standalone -DMEMCHANNEL_FUZZ_SECONDS=$(STANDALONE_FUZZ_SECONDS) >/dev/null
	cmake --build $(SAN_BUILD)/asan -j $(JOBS)
	$(SAN_ENV) ctest --test-dir $(SAN_BUILD)/asan --output-on-failure -j $(JOBS)

test-tsan: deps
	cmake -S . -B $(SAN_BUILD)/tsan -DMEMCHANNEL_SANITIZE=thread $(SAN_CMAKE) >/dev/null
	cmake --build $(SAN_BUILD)/tsan -j $(JOBS)
	$(SAN_ENV) ctest --test-dir $(SAN_BUILD)/tsan --output-on-failure -j $(JOBS)

test-fuzz: deps
	cmake -S . -B $(SAN_BUILD)/fuzz -DCMAKE_CXX_COMPILER=$(FUZZ_CXX) -DMEMCHANNEL_SANITIZE=address,undefined \
	  $(SAN_CMAKE) -DMEMCHANNEL_FUZZ_ENGINE=libfuzzer -DMEMCHANNEL_FUZZ_SECONDS=$(FUZZ_SECONDS) >/dev/null
	cmake --build $(SAN_BUILD)/fuzz -j $(JOBS) --target arena_fuzz arena_fuzz_seeds
	$(SAN_ENV) ctest --test-dir $(SAN_BUILD)/fuzz -L fuzz --output-on-failure

demo: install
	$(VPY) -m memchannel demo

# Soak (docs/reliability.md, item 14): not part of `make test`; reports its figures and checks.
SOAK_SECONDS ?= 3600
soak: install
	$(VPY) -m bench.soak --seconds $(SOAK_SECONDS) --json build/soak-$(PYVER).json

# Ray (compare's ray kind, tests/python/test_ray.py) where it installs; then the cluster
# comparison of docs/guide-cluster.md: one LocalCluster worker process with 2 interpreters
# against 1 process x 2 threads and 2 single-thread processes.
bench: install
	$(VPY) -m bench.harness --install-peers
	@$(VPY) -c 'import ray' 2>/dev/null || $(VPY) -m pip install -q ray || echo "ray does not install here: its rows are left out"
	$(VPY) -m bench.harness $(BENCH_ARGS)
	$(VPY) -m memchannel compare --workload cpu --workers 2 --repeat 5 --startup no \
	  --kinds serial,ideal,threads,interpreters,dask,dask-processes,dask-interpreters$$($(VPY) -c 'import ray' 2>/dev/null && echo ,ray --ray local) \
	  --dask local --png build/compare-cluster.png --json build/compare-cluster.json

clean:
	rm -rf build
