"""Model formats: MONAI Bundles, model cards, TorchScript; the catalog."""
