"""diffcodec benchmarks: scripts (``python bench/lossless.py`` …) and the figure pipeline
``python -m bench`` (see bench/__main__.py). Not installed with the package; results are committed
in bench/results/.
"""
