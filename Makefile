# The README's two commands: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's interpreter: the same Python that orthanc-python embeds, so the venv's packages load
# inside Orthanc too.
BASE_PYTHON := /usr/bin/python3
APT_PACKAGES := orthanc orthanc-python dcmtk dicom3tools python3-venv chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit bench profile clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; \
	 command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	 [ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || missing="$$missing orthanc-python"; \
	 command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	 command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	 $(BASE_PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	 if [ -n "$$missing" ]; then \
	   echo "Installing Debian packages:$$missing"; \
	   $(SUDO) apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	 fi
	[ -x $(PY) ] || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/bidsbridge demo

lint: install
	$(VENV)/bin/ruff check converters orthanc_plugin xnat_container tests benchmarks
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q

test: lint unit

# Issue 12's benchmarks (B1-B9): one table on stdout, every repeat's values in benchmarks/results.json.
# B3 compares with Debian's orthanc-neuro, installed here when missing.
bench: install
	@[ -e /usr/share/orthanc/plugins/libOrthancNeuro.so ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends orthanc-neuro >/dev/null; }
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/bench.py --json benchmarks/results.json

# Where a convert job spends its time (pyinstrument call trees; findings in benchmarks/README.md).
profile: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/profile_convert.py

clean:
	rm -rf $(VENV) demo-work bidsbridge-work *.egg-info
