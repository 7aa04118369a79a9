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
asv: setup  # CPU history of the last two commits (virtualenv mode, torch pinned)
	.venv/bin/asv run --machine $$($(VPY) -m moe_routing_bench.suite.store machine) -b '^bench_' HEAD~2..HEAD
publish: setup
	$(VPY) -m moe_routing_bench.cli publish
gate: setup  # exit 1 when the working tree is slower than $(BASE)
	$(VPY) -m moe_routing_bench.suite.gate --base $(BASE)
