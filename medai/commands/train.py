"""``medai train --data PATH --task TASK --network NAME -o MODEL_DIR``: train a model into a MedAI card."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .progressbar import ProgressBar
from .safety import add_trust_argument, check_outputs


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace("x", ",").split(",") if v.strip()]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a segmentation or classification model into a model card")
    p.add_argument("--data", required=True, help="Decathlon folder (dataset.json), folder of image/label pairs, or CSV (image,label[,split])")
    p.add_argument("--task", default="segmentation", choices=["segmentation", "classification", "multilabel", "regression"],
                   help="multilabel: classes that may co-occur (CSV label cell 'a;b'), one sigmoid output each")
    p.add_argument("--network", default=None, help="unet, segresnet, dynunet (segmentation); densenet121, resnet (classification)")
    p.add_argument("--network-args", default=None, help='JSON overriding network arguments, e.g. \'{"channels": [8, 16, 32], "strides": [2, 2]}\'')
    p.add_argument("-o", "--output", required=True, help="model folder to write (medai.json, model.pt, split.json, history.csv, plots)")
    p.add_argument("--from", dest="finetune_from", default=None, help="fine-tune this model (catalog name or card) with a lower learning rate")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=2, help="patches (segmentation) or images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (x0.1 when fine-tuning)")
    p.add_argument("--roi", default=None, help="patch size (segmentation) or input size (classification), e.g. 96,96,96; two values train a 2D model on single-slice images")
    p.add_argument("--spacing", default=None, help="resample to this voxel size in mm, e.g. 1.5,1.5,2")
    p.add_argument("--intensity", default="nonzero_zscore",
                   help="normalisation: zscore, nonzero_zscore, percentile, or a JSON list of card intensity ops")
    p.add_argument("--augment", default=None, help="comma-separated augmentation (affine,flip,intensity,noise,smooth; default all) or 'none'")
    p.add_argument("--samples-per-case", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--patience", type=int, default=10, help="stop after this many validations without improvement")
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,validation,test fractions when the data gives no split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-foreground", action="store_true", help="training only: crop cases to the labelled region plus a margin")
    p.add_argument("--region-margin", type=float, default=None,
                   help="classification: margin added around a region at inference, as a fraction of its size (0 for patch classifiers)")
    p.add_argument("--denoise", choices=["median", "gaussian"], default=None, help="denoise inputs before normalisation; written into the card, so inference does the same")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint_last.pt")
    p.add_argument("--data-note", default=None, help="a sentence about the data for the card (e.g. that labels are derived)")
    p.add_argument("--name", default=None, help="model name in the card (default: the output folder's name)")
    p.add_argument("--device", default="auto")
    add_trust_argument(p)
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--no-test", action="store_true", help="skip evaluating the test cases at the end")
    p.set_defaults(handler=run)


def intensity_ops(text: str) -> list[dict]:
    presets = {"zscore": [{"op": "zscore"}], "nonzero_zscore": [{"op": "nonzero_zscore"}],
               "percentile": [{"op": "percentile_scale", "lower": 0.5, "upper": 99.5}], "none": []}
    if text in presets:
        return presets[text]
    try:
        ops = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--intensity {text!r}: use {', '.join(presets)} or a JSON list of intensity ops") from exc
    return ops if isinstance(ops, list) else [ops]


def run(args) -> int:
    from ..training import TrainConfig, train
    from ..training.data import discover

    check_outputs([Path(args.output) / "medai.json"], [])  # a read-only folder is found now, not after training
    data = discover(args.data, args.task)
    if args.data_note:
        data.description["note"] = args.data_note
    network = args.network or ("unet" if args.task == "segmentation" else "densenet121")
    config = TrainConfig(
        task=args.task, network=network, network_args=json.loads(args.network_args) if args.network_args else {},
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        roi_size=[int(v) for v in _floats(args.roi)] if args.roi else None,
        spacing=_floats(args.spacing) if args.spacing else None, intensity=intensity_ops(args.intensity),
        samples_per_case=args.samples_per_case, steps_per_epoch=args.steps_per_epoch, val_every=args.val_every,
        patience=args.patience, seed=args.seed, split=tuple(_floats(args.split)),  # type: ignore[arg-type]
        augmentation=[] if args.augment == "none" else (args.augment.split(",") if args.augment else TrainConfig().augmentation),
        device=args.device, amp=not args.no_amp, crop_foreground=args.crop_foreground, denoise=args.denoise,
        finetune_from=args.finetune_from, resume=args.resume, name=args.name, evaluate_test=not args.no_test,
        region_margin=args.region_margin, trust=args.trust,
    )
    print(f"training {network} for {args.task} on {len(data.cases)} case(s) from {args.data}", file=sys.stderr)
    start = time.perf_counter()
    out_existed = Path(args.output).exists()
    try:
        with ProgressBar(f"train {Path(args.output).name}") as bar:
            result = train(data, args.output, config, callback=lambda e: bar(e.fraction, e.text()))
    except KeyboardInterrupt:  # e.g. while caching the data: no half-made model folder is left behind
        if not out_existed and not (Path(args.output) / "medai.json").exists():
            shutil.rmtree(args.output, ignore_errors=True)
        raise
    minutes = (time.perf_counter() - start) / 60
    print(f"{args.output}: {result.stopped} after {len(result.history)} epoch(s), {minutes:.1f} min, "
          f"{result.samples_per_s:.1f} samples/s; best validation {result.metric_name} "
          f"{result.best_metric if result.best_metric is None else round(result.best_metric, 4)} (epoch {result.best_epoch})")
    if result.test_summary:
        s = result.test_summary
        if "mean_dice" in s:
            print(f"  test: mean Dice {s['mean_dice']:.4f}, mean HD95 {s['mean_hd95']:.2f} mm on {s['cases']} case(s)")
        elif "accuracy" in s:
            print(f"  test: accuracy {s['accuracy']:.4f}, macro F1 {s['macro']['f1']:.4f}, macro AUC {s['macro']['auc']:.4f} on {s['cases']} case(s)")
        else:
            print(f"  test: MAE {s['mae']:.4f}, correlation {s['correlation']:.4f} on {s['cases']} case(s)")
    if result.stopped == "interrupted":
        print(f"medai train: interrupted; {args.output} holds the best checkpoint so far and its card", file=sys.stderr)
        return 130
    return 0 if result.card_path else 1
