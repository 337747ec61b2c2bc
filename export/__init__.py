"""keras_effnet.export: model -> SavedModel -> TFLite -> Edge TPU (work in progress, issue 3).

Nothing is exported from here yet; the package exists so the install layout
(`export/` installed as `keras_effnet.export`) is fixed from the start.
"""

__all__: list[str] = []
