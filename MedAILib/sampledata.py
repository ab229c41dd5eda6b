"""Registers the catalog's sample images with Slicer's Sample Data module (done at startup)."""

from __future__ import annotations

import logging
import os

import slicer

from medai.models import catalog
from medai.slicer.panel import load_sample_volume

CATEGORY = "MedAI"


def loadSample(name: str):
    """Fetch (cached in ~/.cache/medai or $MEDAI_HOME) and load a catalog sample; returns its volume node.

    A failure is shown to the user and gives None (it is called from button slots). From the Python
    console use :func:`medai.slicer.panel.load_sample_volume`, which raises instead.
    """
    try:
        # tryWithErrorDisplay shows the error, then re-raises it
        with slicer.util.tryWithErrorDisplay(f"Cannot load the sample {name}.", waitCursor=True):
            node = load_sample_volume(name)
            slicer.util.setSliceViewerLayers(background=node, fit=True)
    except Exception:
        logging.exception("MedAI: cannot load the sample %s", name)
        return None
    return node


def registerSampleData(iconsPath: str | None = None) -> None:
    """Add every catalog sample to the Sample Data module under "MedAI".

    The Sample Data button calls :func:`loadSample` (the source's custom downloader).
    ``SampleData.downloadSample(name)`` cannot load these samples: Slicer's ``downloadSamples`` only
    fetches a source's ``uris`` (none here: the files come out of a pinned wheel) and never calls the
    custom downloader, so it finds nothing (IndexError). Use ``loadSample(name)`` from the console.
    """
    try:
        import SampleData
    except ImportError:
        logging.info("MedAI: Sample Data module not loaded; samples not registered")
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(CATEGORY, title="MedAI")
    thumbnail = os.path.join(iconsPath, "MedAISegment.png") if iconsPath else None
    for entry in catalog.list_samples():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY,
            sampleName=entry.name,
            thumbnailFileName=thumbnail,
            # SampleDataSource needs equal-length lists; the files come from the custom downloader
            uris=[], fileNames=[], nodeNames=[],
            # pinned by version and sha256 in the catalog; fetched by medai, not by a plain URL
            customDownloader=lambda source, name=entry.name: loadSample(name),
        )
