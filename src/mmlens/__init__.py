"""mmlens: training recommender systems on multi-modal MovieLens data.

Each numbered notebook is a thin narrative over one stage function in this package; the CLI
(`python -m mmlens <stage>`) calls the same functions headless.
"""

__version__ = "0.1.0"
