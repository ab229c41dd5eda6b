"""Slicer scene bridge: imports only the MRML API (slicer-core), never Qt."""
