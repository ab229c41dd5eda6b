"""One request object per task, carried unchanged from the CLI and the Slicer logic to the engine."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from classify_helpers import keras_pneumonia_card
from medai.requests import ClassifyRequest, request_from
from test_classify_formats import _chest_xray_png


def test_unknown_option_is_named_with_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) hotspot.*ClassifyRequest takes .*hotspot_threshold"):
        request_from(ClassifyRequest, {"hotspot": 0.2})


def test_cli_options_reach_the_engine_through_the_request(tmp_path):
    """A lower --hotspot-threshold gives larger hot spots: the option reaches the engine."""
    from medai.cli import build_parser, main
    from medai.commands.classify import request_from_args

    png = _chest_xray_png(tmp_path / "chest.png")
    card = keras_pneumonia_card(tmp_path / "pneumonia")
    counts = {}
    for threshold in ("0.3", "0.9"):
        findings = tmp_path / f"findings{threshold}.csv"
        argv = ["classify", str(png), "--model", str(card), "-o", str(tmp_path / "s.csv"), "--explain", str(tmp_path / "h.nrrd"),
                "--findings", str(findings), "--hotspot-threshold", threshold, "--margin", "0.2"]
        request = request_from_args(build_parser().parse_args(argv))
        assert request == ClassifyRequest(explain=True, margin=0.2, hotspot_threshold=float(threshold))
        assert main(argv) == 0
        counts[threshold] = sum(float(r["size_ml"]) for r in csv.DictReader(open(findings)) if r["kind"] == "hot spot")
    assert counts["0.3"] > counts["0.9"] > 0, counts


def test_every_request_field_is_a_cli_option():
    """A new option added to the request must reach the command line too."""
    from medai.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["classify"]
    dests = {a.dest for a in sub._actions}
    assert {f.name for f in dataclasses.fields(ClassifyRequest)} - dests == set()
