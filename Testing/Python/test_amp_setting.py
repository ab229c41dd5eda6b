"""Mixed precision as each model says: a bundle's evaluator ``amp`` (as ``monai.bundle run``), a card's ``inference.amp``.

On the CPU autocast changes nothing; on CUDA it is float16 where the model says so and float32 where it does not
(``benchmarks/bench_gpu.py`` runs both on a GPU). These tests check that each model's own setting is read.
"""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from conftest import write_unet_card
from medai.models.card import ModelCardError, ModelLoadError, read_card
from medai.models.formats.bundle import bundle_amp
from medai.models.loader import load_model
from test_model_zoo import bundle_with_fresh_weights


def parsed(config: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config) if isinstance(config, str) else parser.update(config)
    return parser


@pytest.mark.parametrize("bundle, amp", [("spleen_ct_segmentation", True), ("wholeBody_ct_segmentation", True),
                                         ("endoscopic_inbody_classification", False)])
def test_zoo_bundles_run_with_their_evaluators_amp(model_zoo, bundle, amp):
    assert bundle_amp(parsed(str(model_zoo / bundle / "configs" / "inference.json")), bundle) is amp


def test_references_are_followed_and_non_booleans_refused():
    assert bundle_amp(parsed({"amp": True, "evaluator": {"amp": "@amp"}}), "b") is True
    assert bundle_amp(parsed({"evaluator": {"amp": "$1 > 2"}}), "b") is False
    assert bundle_amp(parsed({"evaluator": {"_target_": "SupervisedEvaluator"}}), "b") is False  # its default
    with pytest.raises(ModelLoadError, match="evaluator.amp is 'yes'"):
        bundle_amp(parsed({"evaluator": {"amp": "yes"}}), "b")


def test_a_loaded_bundle_and_card_carry_their_setting(model_zoo, tmp_path):
    spleen = load_model(str(bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "spleen")), "cpu", trust=True)
    assert spleen.amp is True
    endo = tmp_path / "endo"
    bundle_with_fresh_weights(model_zoo / "endoscopic_inbody_classification", endo)
    assert load_model(str(endo), "cpu", trust=True).amp is False
    assert load_model(str(write_unet_card(tmp_path / "default")), "cpu").amp is True
    off = write_unet_card(tmp_path / "off", inference={"mode": "sliding_window", "roi_size": [16, 16, 16], "amp": False})
    assert load_model(str(off), "cpu").amp is False


def test_cards_refuse_an_amp_that_is_not_a_boolean(tmp_path):
    path = write_unet_card(tmp_path / "m", inference={"mode": "sliding_window", "roi_size": [16, 16, 16], "amp": "fp16"})
    assert json.loads(path.read_text())["inference"]["amp"] == "fp16"
    with pytest.raises(ModelCardError, match="inference.amp 'fp16' must be true"):
        read_card(path)
