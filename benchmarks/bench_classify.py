"""Classification + Grad-CAM of a 3D DenseNet121 on a 96^3 volume: MedAI versus the same MONAI calls by hand.

Run: ``python benchmarks/bench_classify.py [--device cpu|cuda] [--repeats N]``. Prints both timings and their ratio
(MedAI / by hand; 1.0 means MedAI adds nothing). Both paths use the same weights and input and their
scores are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medai.engine.classify import classify  # noqa: E402
from medai.explain.gradcam import find_target_layer  # noqa: E402
from medai.geometry import Volume  # noqa: E402
from medai.models.loader import load_model  # noqa: E402

NETWORK = {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}


def by_hand(net: torch.nn.Module, x: torch.Tensor, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """What a MONAI user writes: normalise, forward, softmax, Grad-CAM of the top class.

    The input stays a plain tensor: a MetaTensor (what ``monai.transforms.NormalizeIntensity`` returns)
    measured about 2.5x slower through the network on the CPU, which would flatter MedAI.
    """
    from monai.visualize import GradCAM

    inp = ((x - x.mean()) / x.std())[None]
    with torch.no_grad():
        probs = torch.softmax(net(inp), dim=1)[0]
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=lambda t: t)
    heat = cam(x=inp, class_idx=int(probs.argmax()))
    return probs.numpy(), heat[0, 0].detach().numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args, _ = parser.parse_known_args()  # run.sh passes the same flags to every benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(net.state_dict(), Path(tmp) / "model.pt")
        card = {"name": "densenet121-3d", "task": "classification", "network": NETWORK, "weights": "model.pt",
                "inputs": [{"name": "CT"}], "classes": ["negative", "positive"],
                "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
                "inference": {"mode": "resize", "roi_size": [96, 96, 96], "activation": "softmax"}}
        (Path(tmp) / "medai.json").write_text(json.dumps(card))
        model = load_model(Path(tmp) / "medai.json", args.device)
    net = model.networks[0]
    layer = find_target_layer(net)
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(96, 96, 96)).astype(np.float32), np.eye(4), "bench")
    x = torch.from_numpy(volume.array.transpose(2, 1, 0).copy())[None].to(args.device)

    def run_medai():
        r = classify(model, [volume], explain=True, method="gradcam")
        return r.cases[0].scores, r.cases[0].heatmap

    def run_hand():
        return by_hand(net, x, layer)

    times = {}
    outputs = {}
    for name, fn in (("medai", run_medai), ("by hand", run_hand)):
        outputs[name] = fn()  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift affects both alike
        for name, fn in (("medai", run_medai), ("by hand", run_hand)):
            start = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - start)
    np.testing.assert_allclose(outputs["medai"][0], outputs["by hand"][0], rtol=1e-4, atol=1e-5)
    medai_s, hand_s = min(times["medai"]), min(times["by hand"])
    print(f"DenseNet121 3D, 96^3, classification + Grad-CAM ({layer}) on {args.device}, torch threads {torch.get_num_threads()}")
    print(f"  MedAI   : {medai_s:.2f} s (best of {args.repeats})")
    print(f"  by hand : {hand_s:.2f} s (best of {args.repeats})")
    print(f"  ratio MedAI / by hand: {medai_s / hand_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
