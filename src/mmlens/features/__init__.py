"""Stages 03 (poster) and 04 (text): pretrained embeddings, one row per catalog movie.

``image.run`` and ``text.run`` are the stage functions; they run the subject code of notebooks 03
and 04 (their ``#@save`` cells, exported to ``mmlens._nb``) over the catalog. ``weights`` finds
pretrained weights (a folder, the Hugging Face cache, the hub) or says in one line how to provide
them; ``merge_shards`` joins sharded runs; ``load_embeddings`` reads a finished table; ``reduce``
and ``neighbours`` help the notebooks; ``precision`` picks the number format both encoders run in.
Heavy libraries (torch, transformers) load only when a stage module is imported."""

from __future__ import annotations

from mmlens.features.outputs import load_embeddings, merge_shards

__all__ = ["load_embeddings", "merge_shards"]
