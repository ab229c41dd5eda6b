"""The real MONAI model-zoo segmentation bundles (configs from ../shared, fresh weights) load and run in memory."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import oblique_affine
from medai.engine.segment import segment
from medai.geometry import Volume
from medai.models.formats.bundle import parse_network_def
from medai.models.loader import load_model

SEGMENTATION_BUNDLES = {
    # name: (input channels, voxel spacing of the test volume)
    "spleen_ct_segmentation": (1, (3.0, 3.0, 4.0)),
    "prostate_mri_anatomy": (1, (2.0, 2.0, 2.0)),
    "wholeBody_ct_segmentation": (1, (4.0, 4.0, 4.0)),
    "swin_unetr_btcv_segmentation": (1, (3.0, 3.0, 4.0)),
    "brats_mri_segmentation": (4, (1.0, 1.0, 1.0)),
}
# the mindgrab network's own class, smaller (its 25 dilated blocks at 256^3 take about 5 min on 2 CPU cores)
SMALLER_NETWORK = {"mindgrab": {"channels": 2, "dilations": [1, 2]}}


def bundle_with_fresh_weights(src: Path, dest: Path, network_args: dict | None = None, init=None) -> Path:
    """Copy a bundle's configs and save its own network_def's freshly initialised weights where its config reads them.

    As the zoo publishes them: ``models/model.pt`` or the file its ``CheckpointLoader`` names (pediatric:
    ``models/dynunet_FT.pt``); DiNTS bundles first get a searched architecture (``models/search_code_*.pt``,
    see :func:`write_search_code`); mindgrab's weights are in the upstream MeshNet key layout its own loader reads.
    """
    from monai.bundle import ConfigParser

    from medai.models.formats.bundle import bundle_parsing, configured_checkpoint, own_weight_loaders, pin_device

    shutil.copytree(src, dest)
    config = next(dest.glob("configs/inference.*"))
    if network_args:  # a smaller network of the bundle's own class (mindgrab: 25 blocks at 256^3 take minutes on a CPU)
        raw = json.loads(config.read_text())
        raw["network_def"].update(network_args)
        config.write_text(json.dumps(raw, indent=4))
    parser = ConfigParser()
    parser.read_config(str(config))
    parser[""] = pin_device(parser[""], "cpu")
    parser["bundle_root"] = str(dest)
    (dest / "models").mkdir(exist_ok=True)
    with bundle_parsing(dest):
        if "arch_ckpt_path" in parser:
            write_search_code(parser, Path(parser.get_parsed_content("arch_ckpt_path")))
        torch.manual_seed(0)
        net = parse_network_def(parser)
        if init is not None:
            init(net)
        state = net.state_dict()
    weights = configured_checkpoint(parser, dest)
    if own_weight_loaders(parser) and "checkpoint_sha256" in parser:  # mindgrab: brainchop-models' MeshNet layout
        convs = [k for k in state if k.startswith("features.")]
        state = {**{f"model.{i}.0.weight": state[k] for i, k in enumerate(convs)},
                 f"model.{len(convs)}.weight": state["classifier.weight"],
                 f"model.{len(convs)}.bias": torch.zeros(state["classifier.weight"].shape[0])}
        torch.save(state, weights)
        raw = json.loads(config.read_text())
        raw["checkpoint_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # as large_files.yml pins it
        config.write_text(json.dumps(raw, indent=4))
    else:
        torch.save(state, weights)
    return dest


def write_search_code(parser, path: Path) -> None:
    """A DiNTS architecture (few channels: decode() does not depend on them) as the bundle's ``scripts/search.py`` saves it: ``TopologySearch.decode()``'s numpy arrays
    (``node_a``, ``arch_code_a``, ``arch_code_a_max``, ``arch_code_c``) and the search's counters, with ``torch.save``."""
    space = parser["dints_space"]
    node_a, arch_code_a, arch_code_c, arch_code_a_max = decoded_search(space["num_blocks"], space["num_depths"], space["use_downsample"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"node_a": node_a, "arch_code_a": arch_code_a, "arch_code_a_max": arch_code_a_max, "arch_code_c": arch_code_c,
                "iter_num": 100, "epochs": 1, "best_dsc": 0.5, "best_path": 100}, path)


@pytest.mark.parametrize("name", sorted(SEGMENTATION_BUNDLES))
def test_zoo_bundle_runs_on_the_input_grid_with_its_label_names(model_zoo, tmp_path, name):
    channels, spacing = SEGMENTATION_BUNDLES[name]
    folder = bundle_with_fresh_weights(model_zoo / name, tmp_path / name)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    model = load_model(folder, "cpu", trust=True)
    expected_names = [v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items() if v.lower() != "background"]
    assert [lab.name for lab in model.labels][: len(expected_names)] == expected_names[: len(model.labels)]
    rng = np.random.default_rng(0)
    shape = (18, 20, 22) if channels == 1 else (24, 26, 28)
    arr = rng.normal(100, 30, size=shape + ((channels,) if channels > 1 else ())).astype(np.float32)
    affine = oblique_affine(spacing=spacing, angles=(0.2, 0.1, 0.3))
    vol = Volume(arr, affine, name=name)
    result = segment(model, [vol])
    assert all(layer.shape == shape for layer in result.layers)
    assert result.reference is vol
    values = np.unique(np.concatenate([np.unique(layer) for layer in result.layers]))
    assert values.min() >= 0
    if len(result.layers) == 1:
        assert set(values[values > 0].tolist()) <= {lab.value for lab in result.labels}


def test_bundle_preprocessing_and_invert_keep_world_positions(model_zoo, tmp_path):
    """The spleen bundle's own Orientation/Spacing/ScaleIntensityRange/Invertd, with a threshold network.

    A 1x1x1 conv labels voxels whose scaled intensity is above 0.5: the bright cube must come back
    at the same place on an oblique, anisotropic grid after the bundle resampled it to 1.5x1.5x2 mm.
    """
    folder = tmp_path / "spleen_threshold"
    shutil.copytree(model_zoo / "spleen_ct_segmentation", folder)
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["network_def"] = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1) * 10
        conv.bias[:] = torch.tensor([5.0, -5.0])
    (folder / "models").mkdir()
    torch.save(conv.state_dict(), folder / "models" / "model.pt")
    arr = np.full((30, 34, 38), -1000, dtype=np.int16)
    arr[8:20, 10:24, 12:30] = 200
    vol = Volume(arr, oblique_affine(spacing=(1.1, 0.9, 2.3)), name="ct")
    result = segment(load_model(folder, "cpu", trust=True), [vol])
    got, truth = result.layers[0] == 1, arr > 0
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.85, dice


def test_bundle_that_adds_its_own_channel_axis_runs_like_the_original(model_zoo, tmp_path):
    """renalStructures_UNEST writes EnsureChannelFirstd(channel_dim="no_channel"): on an image that arrives
    channel-first in memory that would add a second channel axis; MedAI removes the transform, as LoadImage is."""
    from medai.engine.segment import segment
    from medai.geometry import Volume

    plain = bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "plain")
    forced = bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "forced")
    config = json.loads((forced / "configs" / "inference.json").read_text())
    steps = config["preprocessing"]["transforms"]
    ensure = [t for t in steps if str(t.get("_target_", "")).endswith("EnsureChannelFirstd")]
    assert ensure, "the spleen config has an EnsureChannelFirstd to change"
    for t in ensure:
        t["channel_dim"] = "no_channel"
    (forced / "configs" / "inference.json").write_text(json.dumps(config))
    arr = np.random.default_rng(0).normal(100, 30, (18, 20, 22)).astype(np.float32)
    volume = Volume(arr, oblique_affine(spacing=(1.5, 1.5, 2.0)), "ct")
    a = segment(load_model(plain, "cpu", trust=True), [volume])
    b = segment(load_model(forced, "cpu", trust=True), [volume])
    assert a.layers[0].shape == arr.shape and np.array_equal(a.layers[0], b.layers[0])


@functools.lru_cache
def decoded_search(num_blocks: int, num_depths: int, use_downsample: bool) -> tuple:
    """``TopologySearch.decode()`` of a freshly initialised search space (about 20 s on 2 cores: once per session)."""
    from monai.networks.nets import TopologySearch

    torch.manual_seed(0)
    return TopologySearch(channel_mul=0.125, num_blocks=num_blocks, num_depths=num_depths, use_downsample=use_downsample,
                          device="cpu").decode()


@pytest.mark.slow
def test_dints_search_code_as_published_loads_with_weights_only(tmp_path):
    """pancreas DiNTS reads its architecture with a bare ``torch.load``; the file holds numpy arrays, which torch's
    default ``weights_only=True`` refuses: MedAI allows numpy arrays (and nothing else) while parsing a bundle."""
    import pickle

    from monai.bundle import ConfigParser

    from conftest import zoo_bundle
    from medai.models.formats.bundle import bundle_parsing

    folder = zoo_bundle("pancreas_ct_dints_segmentation")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.yaml"))
    path = tmp_path / "models" / "search_code_18590.pt"
    write_search_code(parser, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with bundle_parsing(tmp_path):
        code = torch.load(path)
    assert isinstance(code["node_a"], np.ndarray) and code["arch_code_c"].shape[0] == code["arch_code_a"].shape[0] == 12
    # the published file (2022) was pickled under numpy 1, whose arrays are named numpy.core.multiarray: also allowed
    legacy = tmp_path / "numpy1.pt"
    torch.save(code, legacy, _use_new_zipfile_serialization=False, pickle_protocol=2)  # plain pickle: names as text
    legacy.write_bytes(legacy.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in legacy.read_bytes()
    with bundle_parsing(tmp_path):
        assert np.array_equal(torch.load(legacy)["node_a"], code["node_a"])
    with bundle_parsing(tmp_path), pytest.raises(pickle.UnpicklingError):  # still no arbitrary objects
        torch.save({"x": Path("not-an-array")}, tmp_path / "other.pt")
        torch.load(tmp_path / "other.pt")


@pytest.mark.slow
def test_mindgrab_mask_is_the_one_its_own_postprocessing_applies(tmp_path):
    """mindgrab's postprocessing returns the input with non-brain voxels set to the image minimum; MedAI keeps its mask
    steps (argmax, largest 26-connected component) and brings the mask to the input grid: the same voxels are kept."""
    from conftest import zoo_bundle
    from medai.models.formats.bundle import bundle_scripts_importable

    def threshold(net):  # one block: identity conv, then class "brain" where the normalised intensity is above its mean
        with torch.no_grad():
            net.features[0].weight.zero_()
            net.features[0].weight[0, 0, 1, 1, 1] = 1.0
            net.classifier.weight[:] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1)

    folder = bundle_with_fresh_weights(zoo_bundle("mindgrab"), tmp_path / "mindgrab", {"channels": 1, "dilations": [1]}, threshold)
    model = load_model(folder, "cpu", trust=True)
    shape = (24, 22, 20)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    ball = ((ijk - np.array([12, 11, 10]).reshape(3, 1, 1, 1)) ** 2).sum(0) < 36
    arr = np.where(ball, 300.0, 0.0).astype(np.float32).transpose(2, 1, 0)  # Volume arrays are [k, j, i]
    volume = Volume(arr, oblique_affine(spacing=(2.0, 2.0, 2.0)), name="head")
    result = segment(model, [volume])
    mask = result.layers[0].astype(bool)
    assert [lab.name for lab in result.labels] == ["brain"]
    # the bundle's own pipeline on the same input: preprocessing, network, its MindGrabPostprocessd
    data = model.bundle.preprocessing({"image": volume_tensor(volume)})
    with torch.no_grad():
        logits = model.networks[0](data["image"][None])[0]
    from monai.data import MetaTensor

    with bundle_scripts_importable(folder):
        from scripts.transforms import MindGrabPostprocessd

        own = MindGrabPostprocessd(keys="pred")({"pred": MetaTensor(logits, meta=dict(data["image"].meta))})["pred"]
    own = np.asarray(own[0]).transpose(2, 1, 0)
    kept = own != arr.min()
    bright = arr != arr.min()
    assert kept.sum() > 50 and np.array_equal(mask[bright], kept[bright])
    from scipy.ndimage import binary_dilation

    assert mask[bright].mean() > 0.9 and not (mask & ~binary_dilation(bright, iterations=2)).any()  # the ball, blurred a little


def volume_tensor(volume: Volume):
    from medai.engine.bundle_inputs import as_meta_tensor
    from medai.geometry import to_ijk_array

    return as_meta_tensor(torch.from_numpy(to_ijk_array(volume)).float(), volume)
