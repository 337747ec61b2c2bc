"""Small helpers shared by the training modules."""

from __future__ import annotations

from collections.abc import Iterator

import keras

__all__ = ["iter_layers"]


def iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included, depth first."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)
