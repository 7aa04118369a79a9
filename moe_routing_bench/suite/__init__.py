"""The regression-suite infrastructure: the result store (asv results) and its exporters,
dashboard publishing, the regression gate. Imports the harness and the library; neither imports it.
"""
