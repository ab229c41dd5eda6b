"""MedAI core: MONAI segmentation and classification on volumes with exact geometry.

No Slicer or Qt import happens here; the scene bridge lives in :mod:`medai.slicer`.
"""

__version__ = "0.1.0"
