"""ETL batches as a ``keras.utils.PyDataset``: the training input on Keras backends other than
TensorFlow (torch in the Merlin container), where :func:`mmlens.train.data.make_dataset` cannot
hand ``tf.data`` to Keras."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras


class SequentialBatches(keras.utils.PyDataset):
    """``n_batches`` batches drawn in order from a fresh ``make_batches()`` iterator per pass.

    Keras reads a PyDataset by index, one pass per epoch, in order (``fit(shuffle=False)``; the
    iterator shuffles itself): index 0 starts a new pass, so every epoch gets a new permutation,
    and any other index must be the next one.
    """

    def __init__(self, make_batches: Callable[[], Iterator[Any]], n_batches: int) -> None:
        super().__init__()
        self.make_batches, self.n_batches = make_batches, int(n_batches)
        self._batches: Iterator[Any] | None = None
        self._next = 0

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> Any:
        if index == 0:
            self._batches, self._next = self.make_batches(), 0
        if self._batches is None or index != self._next:
            raise IndexError(f"batches are read in order: asked for {index}, next is {self._next}")
        self._next += 1
        return next(self._batches)
