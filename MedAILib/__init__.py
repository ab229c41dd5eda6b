"""Qt-side helpers shared by the MedAISegment and MedAIClassify module panels.

This package may import ``qt``, ``ctk`` and ``slicer``; the core (``medai``) never does.
``dependencies`` imports no Qt at load time so that its install plan is testable headless.
"""
