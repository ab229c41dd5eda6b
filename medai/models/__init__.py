"""Models: the format plugins (:mod:`.formats`: MONAI Bundle, model card, TorchScript, ONNX), the card parser, the catalog, the loader."""
