"""Inference: run folders to predictions at the input's original size, TTA, postprocessing."""
