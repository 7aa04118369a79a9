"""The benchmark harness: workloads, timing, cases, records, roofline and the `moe-bench` commands.

Imports the routing library only; never the suite.
"""
