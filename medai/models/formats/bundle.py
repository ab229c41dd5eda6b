"""MONAI Bundles as published in the model zoo: a folder or a ``.zip`` with ``configs/metadata.json``.

They run in memory through ``monai.bundle.ConfigParser`` with the bundle's own preprocessing,
inferer and postprocessing (``Invertd`` included); ``LoadImage``/``SaveImage`` are removed from
the config before parsing, so no file I/O transform is ever instantiated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...results import Label
from .. import trust
from ..card import ModelCard, ModelLoadError, bundle_class_names, bundle_output, parse_labels
from . import ModelFormat, extract_model_zip, zip_names
from .bundle_config import loaded_keys, numpy_array_globals, own_weight_loaders, rewrite_steps, target_name, unmask

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..loader import LoadedModel

log = logging.getLogger(__name__)


def _find_config(folder: Path, stem: str) -> Path | None:
    for ext in (".json", ".yaml", ".yml"):
        p = folder / "configs" / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def extract_bundle_zip(path: Path) -> Path:
    """Unpack a bundle zip into the cache (once per content hash), refusing escaping entries."""
    dest = extract_model_zip(path, "bundles")
    roots = {p.parent.parent for p in dest.rglob("configs/metadata.json")}
    if len(roots) != 1:
        raise ModelLoadError(f"{path}: expected one bundle (configs/metadata.json) in the zip, found {len(roots)}")
    return roots.pop()


def _strip(parser: Any, key: str, names: tuple[str, ...]) -> None:
    """Remove file I/O transforms from a bundle Compose config (call before parsing anything).

    They are removed from the config before parsing, so that e.g. an ITK-based LoadImaged is never
    instantiated (the image arrives in memory). Invertd keeps referring to the parsed Compose.
    """
    rewrite_steps(parser, key, lambda step: [] if target_name(step) in names else [step])


def bundle_labels(meta: dict) -> list[Label]:
    """Label names from ``network_data_format.outputs.pred.channel_def``.

    With a "background" channel, channel N is label value N; without one (sigmoid multi-label
    outputs such as BraTS), every channel is a class and channel N becomes value N + 1.
    """
    out = bundle_output(meta)
    channel_def = {str(k): v for k, v in (out.get("channel_def") or {}).items() if str(k).isdigit()}
    if any(str(v).lower() == "background" for v in channel_def.values()):
        raw = {k: v for k, v in channel_def.items() if str(v).lower() != "background"}
    else:
        raw = {str(int(k) + 1): v for k, v in channel_def.items()}
    return parse_labels(raw, "bundle metadata")


def config_labels(parser: Any) -> list[Label]:
    """Labels from an inference config's ``labels: {name: value}`` (pediatric: metadata has no channel_def)."""
    raw = parser.get("labels") if "labels" in parser else None
    if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
        return []
    return parse_labels({str(v): str(k) for k, v in raw.items() if v > 0}, "bundle inference config")


# Network arguments that newer MONAI versions removed; bundles published earlier still pass them.
REMOVED_NETWORK_ARGS = ("img_size",)


def parse_network_def(parser: Any, key: str = "network_def") -> torch.nn.Module:
    """Instantiate a bundle's network, dropping arguments the installed MONAI no longer accepts."""
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:
        text = "".join(str(e) for e in (exc, exc.__cause__) if e)
        dropped = [a for a in REMOVED_NETWORK_ARGS if f"unexpected keyword argument '{a}'" in text and a in parser[key]]
        if not dropped:
            raise
        log.warning("%s: dropping %s, which this MONAI version no longer accepts", key, ", ".join(dropped))
        config = dict(parser[key])
        for a in dropped:
            config.pop(a)
        parser[key] = config
        return parser.get_parsed_content(key, lazy=False)


_HARD_CUDA = re.compile(r"""torch\.device\(\s*(['"])cuda(?::\d+)?\1\s*\)""")


def pin_device(config: Any, device: str) -> Any:
    """Replace hard-coded ``torch.device('cuda')`` in ``$`` expressions (e.g. pancreas DiNTS) by ``device``.

    The usual ``torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')`` is left alone;
    ``@device`` is set to the user's device anyway.
    """
    if isinstance(config, dict):
        return {k: pin_device(v, device) for k, v in config.items()}
    if isinstance(config, list):
        return [pin_device(v, device) for v in config]
    if isinstance(config, str) and config.startswith("$"):
        return _HARD_CUDA.sub(f"torch.device('{device}')", config)
    return config


def bundle_amp(parser: Any, where: str) -> bool:
    """Whether ``monai.bundle run`` autocasts the network to float16 on CUDA: its evaluator's ``amp`` (a literal
    or a reference such as ``@amp``); without one, ``SupervisedEvaluator``'s default, False."""
    if "evaluator#amp" not in parser:
        return False
    try:
        amp = parser.get_parsed_content("evaluator#amp")
    except Exception as exc:
        raise ModelLoadError(f"{where}: cannot read evaluator.amp from its inference config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(amp, bool):
        raise ModelLoadError(f"{where}: evaluator.amp is {amp!r}; the bundle must say true or false")
    return amp


def configured_checkpoint(parser: Any, folder: Path) -> Path:
    """The weights file the inference config names: a ``CheckpointLoader``'s ``load_path`` (handler or top-level item;
    pediatric: ``models/dynunet_FT.pt``), else ``models/model.pt``."""
    items = list(parser.get("handlers") or []) if isinstance(parser.get("handlers"), list) else []
    items += [v for v in (parser.get("") or {}).values() if isinstance(v, dict)]
    for item in items:
        if isinstance(item, dict) and str(item.get("_target_", "")).endswith("CheckpointLoader"):
            found = re.search(r"""['"]/?(models/[^'"]+\.pth?)['"]""", str(item.get("load_path", "")))
            if found:
                return folder / found.group(1)
    return folder / "models" / "model.pt"


def checkpoint_path(parser: Any, folder: Path) -> Path:
    """``models/model.pt``, or the file a ``CheckpointLoader`` of the config loads (pediatric: ``models/dynunet_FT.pt``)."""
    default = folder / "models" / "model.pt"
    named = configured_checkpoint(parser, folder)
    return named if not default.exists() and named.exists() else default


@contextlib.contextmanager
def bundle_scripts_importable(folder: Path):
    """Let a bundle's config import its own ``scripts`` package (UNesT networks, custom transforms), as
    ``monai.bundle`` does by putting the bundle root on ``sys.path``; another bundle's ``scripts`` is forgotten first."""
    if not (folder / "scripts").is_dir():
        yield
        return
    for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[mod]
    sys.path.insert(1, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


@contextlib.contextmanager
def bundle_parsing(folder: Path):
    """While a bundle's config is parsed: its ``scripts`` importable, and numpy arrays readable by its own
    ``torch.load`` (DiNTS search codes); ``weights_only`` stays on, so nothing else unpickles."""
    import torch

    with bundle_scripts_importable(folder), torch.serialization.safe_globals(numpy_array_globals()):
        yield


def load_bundle(folder: Path, device: torch.device) -> LoadedModel:
    with bundle_parsing(folder):
        return _load_bundle(folder, device)


def _load_bundle(folder: Path, device: torch.device) -> LoadedModel:
    from monai.bundle import ConfigParser

    from ..loader import BundleParts, LoadedModel, load_state_dict, load_torchscript

    meta_path = folder / "configs" / "metadata.json"
    infer_path = _find_config(folder, "inference")
    if not meta_path.exists() or infer_path is None:
        raise ModelLoadError(f"{folder}: not a MONAI Bundle (needs configs/metadata.json and configs/inference.json|yaml)")
    trust.require("MONAI Bundle", trust.bundle_code(folder))
    parser = ConfigParser()
    parser.read_meta(str(meta_path))
    parser.read_config(str(infer_path))
    parser[""] = pin_device(parser[""], str(device))  # hard-coded CUDA runs on the device the user picked
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device('{device}')"
    meta = json.loads(meta_path.read_text())
    where = f"bundle {folder.name}"
    keys, meta_dicts = loaded_keys(parser)  # several (renalStructures_CECT: artery, vein, excret): one volume each
    # the image arrives in memory, channel-first, and the result goes to the scene: no file I/O transforms and no
    # EnsureChannelFirst (a bundle's channel_dim="no_channel", e.g. renalStructures_UNEST, would add a second channel axis)
    _strip(parser, "preprocessing", ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst"))
    if "postprocessing" in parser:
        _strip(parser, "postprocessing", ("SaveImaged", "SaveImage", "SaveClassificationd", "SaveClassification"))
        unmask(parser, "postprocessing")
    try:
        ts_path, pt_path = folder / "models" / "model.ts", checkpoint_path(parser, folder)
        own_loaders = own_weight_loaders(parser)
        if pt_path.exists() and own_loaders:  # the bundle's own code reads its checkpoint (mindgrab)
            network = parse_network_def(parser)
            parser["network"] = network
            for step in own_loaders:
                parser.get_parsed_content(step)
        elif pt_path.exists():
            net_def = parser.get("network_def")
            if isinstance(net_def, dict) and net_def.get("pretrained"):
                parser["network_def"]["pretrained"] = False  # models/model.pt replaces them; nothing is downloaded
            network = parse_network_def(parser)
            state = load_state_dict(pt_path)
            try:
                network.load_state_dict(state)
            except RuntimeError as exc:
                raise ModelLoadError(f"{pt_path}: weights do not fit the bundle's network_def ({str(exc).splitlines()[0][:300]})") from exc
        elif ts_path.exists():
            network = load_torchscript(ts_path)
        else:
            raise ModelLoadError(
                f"{where}: no weights; put the bundle's models/model.pt (or model.ts) into {folder / 'models'} "
                "(configs/large_files.yml names where the published weights are)"
            )
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        # parsed after preprocessing, so its Invertd refers to that very Compose object
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{where}: cannot parse its inference config ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from exc
    fmt = meta.get("network_data_format", {})
    image_in = fmt.get("inputs", {}).get("image", {})
    channels = int(image_in.get("num_channels", 1))
    # segmentation: one input per loaded key, each its own volume with its own grid (renalStructures_CECT); the
    # classification engine feeds its bundles' second key itself (pathology_nuclei: the nucleus mask as ``label``)
    if len(keys) > 1 and _bundle_task(meta) == "segmentation":
        inputs = [{"name": k, "modality": image_in.get("modality", ""), "bundle_key": k,
                   "meta_dict": f"{k}_meta_dict" if meta_dicts else None} for k in keys]
    else:
        inputs = [{"name": str(n), "modality": image_in.get("modality", "")}
                  for n in (image_in.get("channel_def") or {str(i): f"channel {i}" for i in range(channels)}).values()]
    card = ModelCard(
        name=meta.get("name") or folder.name,
        task=_bundle_task(meta),
        stages=[],
        labels=bundle_labels(meta) or config_labels(parser),
        inputs=inputs,
        root=folder,
        title=meta.get("name", folder.name),
        description=meta.get("description", ""),
        license=(folder / "LICENSE").read_text().splitlines()[0] if (folder / "LICENSE").exists() else "",
        classes=_class_names(meta),
        spatial_dims=len(image_in.get("spatial_shape", [0, 0, 0])),
        version=str(meta.get("version") or ""),
        raw=meta,
    )
    parts = BundleParts(parser, parser.get("image_key", "image") or "image", preprocessing, inferer, postprocessing,
                        bundle_amp(parser, where))
    return LoadedModel(card, [network.to(device).eval()], device, "bundle", folder, parts)


def _class_names(meta: dict) -> list[str]:
    """Classification bundles: one name per output channel (``class N`` where the metadata names too few)."""
    names = bundle_class_names(meta)
    n_out = int(bundle_output(meta).get("num_channels", len(names) or 1))
    return names if len(names) == n_out else [f"class {i}" for i in range(n_out)]


def _bundle_task(meta: dict) -> str:
    out = bundle_output(meta)
    return "classification" if out.get("type") in ("probabilities", "logits") or "classif" in meta.get("task", "").lower() else "segmentation"


class BundleFormat(ModelFormat):
    name = "bundle"
    summary = "a MONAI Bundle folder or .zip (configs/metadata.json + configs/inference.json|yaml)"

    def recognise(self, path: Path) -> bool:
        if path.is_dir():
            return (path / "configs" / "metadata.json").exists()
        return path.suffix.lower() == ".zip" and any(n.endswith("configs/metadata.json") for n in zip_names(path))

    def load(self, path: Path, device: torch.device) -> LoadedModel:
        folder = extract_bundle_zip(path) if path.is_file() else path
        return load_bundle(folder, device)

    def segment(self, model, volumes, progress):
        from ...engine.segment import segment_with_bundle

        return segment_with_bundle(model, volumes, progress)


FORMAT = BundleFormat()
