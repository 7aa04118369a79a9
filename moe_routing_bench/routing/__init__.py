"""The routing library: routers, plan, dispatch (pack/combine), metrics, the MoE layer, backends.

Imports torch (and triton lazily, inside the `triton` backend); nothing from the harness or suite.
"""
