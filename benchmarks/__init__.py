"""asv suites for moe-routing-bench (see common.py; run with `asv run`, config in ../asv.conf.json)."""
