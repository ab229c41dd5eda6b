"""How MedAI adapts a MONAI Bundle's inference config to running in memory, beyond removing file I/O.

* the image keys its ``LoadImaged`` loads (several for renalStructures_CECT: one input volume each);
* weights its own ``initialize`` code loads (mindgrab);
* numpy arrays its own ``torch.load`` reads (DiNTS search codes) under ``weights_only=True``;
* postprocessing that returns a masked image instead of a labelmap (mindgrab).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_NETWORK_REF = re.compile(r"@network\b")


def own_weight_loaders(parser: Any) -> list[str]:
    """Ids of ``initialize`` expressions that load the weights into ``@network`` with the bundle's own code (mindgrab's
    ``checkpoint.load_meshnet_checkpoint`` reads the upstream checkpoint's key layout and checks its sha256)."""
    steps = parser.get("initialize") if "initialize" in parser else None
    if not isinstance(steps, list):
        return []
    return [f"initialize#{n}" for n, step in enumerate(steps)
            if isinstance(step, str) and step.startswith("$") and _NETWORK_REF.search(step) and "models/" in step]


def numpy_array_globals() -> list:
    """What ``torch.load(weights_only=True)`` must accept to read numpy arrays and scalars, under numpy 1 and 2 names.

    DiNTS bundles load their architecture (``models/search_code_*.pt``, written by their ``scripts/search.py``:
    numpy arrays from ``TopologySearch.decode()`` plus ints and floats) with a bare ``torch.load``; torch's
    default ``weights_only=True`` refuses numpy's reconstruct functions unless they are allowed like this.
    """
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    dtypes = {type(np.dtype(t)) for t in (bool, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                          np.uint64, np.float16, np.float32, np.float64)}
    out: list = [np.ndarray, np.dtype, *sorted(dtypes, key=str)]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        out += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return out


# Postprocessing steps that return the input image masked (a skull-stripped image), not a labelmap: MedAI keeps the
# steps that make their mask and brings it back to the input grid by nearest neighbour itself, as they do.
MASKING_STEPS = {
    # mindgrab scripts/postprocess.py: argmax, largest 26-connected component, nearest reslice, then the input masked
    "MindGrabPostprocessd": lambda keys: [{"_target_": "AsDiscreted", "keys": keys, "argmax": True},
                                          {"_target_": "KeepLargestConnectedComponentd", "keys": keys, "applied_labels": [1],
                                           "connectivity": 3}],
}


def target_name(step: Any) -> str:
    """The class name a config step instantiates (``"monai.transforms.LoadImaged"`` -> ``"LoadImaged"``); "" for others."""
    return str(step.get("_target_", "")).split(".")[-1] if isinstance(step, dict) else ""


def rewrite_steps(parser: Any, key: str, replace: Callable[[Any], list]) -> None:
    """Rewrite a Compose config's ``transforms`` list (before parsing): each step becomes the steps ``replace(step)`` gives."""
    config = parser[key]
    if isinstance(config, dict) and isinstance(config.get("transforms"), list):
        parser[key] = {**config, "transforms": [new for step in config["transforms"] for new in replace(step)]}


def unmask(parser: Any, key: str) -> None:
    """Replace the :data:`MASKING_STEPS` of a postprocessing Compose config by the steps that make their mask."""
    def replace(step: Any) -> list:
        make = MASKING_STEPS.get(target_name(step))
        return make(step.get("keys", "pred")) if make else [step]

    rewrite_steps(parser, key, replace)


def loaded_keys(parser: Any) -> tuple[list[str], bool]:
    """The image keys the inference preprocessing loads, in order, and whether it kept meta dicts (``image_only=False``).

    Keys no later preprocessing step uses (renalStructures_CECT loads a ``label`` it never transforms) are left out.
    """
    config = parser["preprocessing"] if "preprocessing" in parser else None
    steps = config.get("transforms") if isinstance(config, dict) else None
    if not isinstance(steps, list):
        return [], False

    def keys_of(step: dict) -> list[str]:
        keys = step.get("keys", [])
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        return [str(parser[k[1:]]) if isinstance(k, str) and k.startswith("@") and k[1:] in parser else str(k) for k in keys]

    loads = [s for s in steps if target_name(s) in ("LoadImaged", "LoadImage")]
    if not loads:
        return [], False
    used = {k for s in steps if isinstance(s, dict) and s not in loads for k in keys_of(s)}
    used |= {str(k) for s in steps if isinstance(s, dict) for f, v in s.items() if f in ("keys_merge", "source_key")
             for k in ([v] if isinstance(v, str) else v or [])}
    keys = [k for k in keys_of(loads[0]) if k in used]
    return keys, loads[0].get("image_only") is False
