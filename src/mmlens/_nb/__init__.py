"""Code exported from the notebooks' `#@save` cells (see mmlens.export)."""
