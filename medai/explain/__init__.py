"""Explanations of classification outputs: Grad-CAM / Grad-CAM++ / occlusion heatmaps and their hot spots."""
