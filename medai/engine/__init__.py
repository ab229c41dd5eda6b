"""Inference engines, pre/post-processing, progress and cancellation."""
