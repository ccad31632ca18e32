# The two commands of the README, for a fresh Debian machine as root:
#   make demo   installs what memscope needs, boots the default kernel with a workload,
#               dumps it and prints memscope's reports on the dump
#   make test   installs the same and runs the whole test suite (what .ci/run runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qemu-system-x86 qemu-system-arm busybox-static cpio gdb gdb-multiarch \
	dwarves zstd xz-utils python3-venv python3-numpy python3-tabulate python3-pil \
	fonts-dejavu-core gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross e2fsprogs

.PHONY: setup demo test bench clean-cases

$(VENV)/.installed: pyproject.toml
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m memscope.demo

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" MEMSCOPE_PREBUILD=1 $(PY) -m pytest -q -p no:cacheprovider --durations=25

bench: setup
	$(PY) -m benchmarks

clean-cases:
	rm -rf "$${MEMSCOPE_CACHE:-$$HOME/.cache/memscope}/lab-cases"
