"""Stages 03 (poster) and 04 (text): pretrained embeddings, one row per catalog movie.

``image.run`` and ``text.run`` are the stage functions; ``merge_shards`` joins sharded runs;
``load_embeddings`` reads a finished table; ``reduce`` and ``neighbours`` help the notebooks;
``precision`` picks the number format both encoders run in.
Heavy libraries (torch, transformers) load only when a stage runs.
"""

from __future__ import annotations

from mmlens.features.outputs import load_embeddings, merge_shards

__all__ = ["load_embeddings", "merge_shards"]
