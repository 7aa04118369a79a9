# Convenience targets; each sets up .venv first through dev.py (which needs only python3).
PY ?= python3
VPY := .venv/bin/python
BASE ?= HEAD~1

.PHONY: setup bench test bench-tests asv publish gate
setup:
	$(PY) dev.py setup
bench:
	$(PY) dev.py bench
test:
	$(PY) dev.py test
bench-tests: setup
	$(VPY) -m pytest -q --benchmark-only
asv: setup  # the tip of main on this machine (the project built per commit, the host's torch); asks nothing
	.venv/bin/asv run
publish: setup  # offline dashboard in .asv/html (the project's asv plugin vendors the JavaScript)
	.venv/bin/asv publish
gate: setup  # exit 1 when the working tree is slower than $(BASE)
	$(VPY) -m moe_routing_bench.suite.gate --base $(BASE)
