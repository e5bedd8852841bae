# memchannel: every target sets itself up on a fresh machine (Debian packages, a venv, the build).
#   make test                 C++ (ctest) and Python (pytest) tests
#   make demo                 the main demo
#   make bench                side-by-side benchmarks against the peers
#   make test PYTHON=/root/.pyenv/versions/3.12.1/bin/python3   the same on another CPython

PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.13.*/bin/python3) $(shell command -v python3.13) $(shell command -v python3))
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The default interpreter (3.13) uses .venv; any other version gets its own .venv-X.Y.
VENV ?= $(if $(filter 3.13,$(PYVER)),.venv,.venv-$(PYVER))
VPY := $(VENV)/bin/python
BUILD := build/cpp-$(PYVER)
JOBS ?= $(shell nproc)
DEB_PACKAGES := libgtest-dev libboost-dev libbenchmark-dev
PYTEST_ARGS ?=

.PHONY: all deps venv install cpp test test-cpp test-python demo bench clean sanitize

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
	$(VPY) -m pip install -q "pybind11>=3.0" "scikit-build-core>=0.10" numpy pytest pytest-timeout matplotlib
	touch $@

venv: $(VENV)/.ready

# The Python package, built by scikit-build-core into a persistent build dir (incremental).
install: deps venv
	$(VPY) -m pip install -q --no-build-isolation --config-settings=build-dir=build/py-$(PYVER) .

cpp: deps venv
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=$(abspath $(VPY)) \
	  -DMEMCHANNEL_BUILD_PYTHON=OFF -DMEMCHANNEL_TEST_HOOKS=ON >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

test-cpp: cpp
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# pytest: every capability's tests, the docs examples, and the benchmark harness in smoke mode
# (every transport yields a row or a stated skip; no timings are asserted).
test-python: install
	$(VPY) -m pytest -q tests/python bench/test_bench_smoke.py $(PYTEST_ARGS)

test: test-cpp test-python

# Sanitizer builds of the core tests (ASan+UBSan, then TSan).
sanitize: deps venv
	cmake -S . -B build/asan -DMEMCHANNEL_SANITIZE=address,undefined -DMEMCHANNEL_BUILD_PYTHON=OFF -DMEMCHANNEL_BUILD_BENCH=OFF >/dev/null
	cmake --build build/asan -j $(JOBS) && ctest --test-dir build/asan --output-on-failure
	cmake -S . -B build/tsan -DMEMCHANNEL_SANITIZE=thread -DMEMCHANNEL_BUILD_PYTHON=OFF -DMEMCHANNEL_BUILD_BENCH=OFF >/dev/null
	cmake --build build/tsan -j $(JOBS) && ctest --test-dir build/tsan --output-on-failure

demo: install
	$(VPY) -m memchannel demo

bench: install
	$(VPY) -m bench.harness --install-peers
	$(VPY) -m bench.harness $(BENCH_ARGS)

clean:
	rm -rf build
