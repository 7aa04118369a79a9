"""moe-routing-bench: Mixture-of-Experts routing primitives, benchmarks and a training harness.

Modules, in dependency order: errors, routers, plan, dispatch, metrics, workloads, timing, store,
backends (torch | compile | triton), layer, bench (cases shared by CLI, asv and pytest-benchmark), cli.
"""
__version__ = "0.1.0"
