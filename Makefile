# Convenience targets; each sets up .venv first through dev.py (which needs only python3).
PY ?= python3
VPY := .venv/bin/python

.PHONY: setup bench test bench-tests
setup:
	$(PY) dev.py setup
bench:
	$(PY) dev.py bench
test:
	$(PY) dev.py test
bench-tests: setup
	$(VPY) -m pytest -q --benchmark-only
