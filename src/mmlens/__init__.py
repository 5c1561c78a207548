"""mmlens: training recommender systems on multi-modal MovieLens data.

Each numbered notebook is a thin narrative over one stage function in this package; the CLI
(`python -m mmlens <stage>`) calls the same functions headless.

Importing mmlens sets :data:`TENSORFLOW_DEFAULTS` in the environment where they are not set yet,
so they hold for a TensorFlow loaded afterwards (import mmlens before Keras).
"""

import os

__version__ = "0.1.0"

#: TensorFlow's oneDNN kernels turn on by themselves only on CPUs with VNNI or AMX; elsewhere
#: (AVX2-only CPUs) TensorFlow's own matmuls, built without AVX2/FMA, make the frozen tables'
#: projections the slow part of a training step (README: bench_08). A value the user set wins.
TENSORFLOW_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1"}

for _name, _value in TENSORFLOW_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
