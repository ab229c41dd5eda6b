"""``medai train --data PATH --task TASK --network NAME -o MODEL_DIR``: train a model into a MedAI card.

``medai train --recipe NAME`` trains a catalog recipe (data and settings from the catalog; options
given on the command line replace the recipe's) into MedAI's cache, where ``-m NAME`` finds it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ..training.config import TrainConfig
from .progressbar import ProgressBar
from .safety import add_trust_argument, check_outputs

DEFAULTS = TrainConfig()  # the options' defaults are the settings' own (torch-free import)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace("x", ",").split(",") if v.strip()]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a segmentation or classification model into a model card")
    p.add_argument("--recipe", default=None, help="train a catalog recipe, e.g. pneumonia (data and settings from the catalog; "
                   "options given here replace the recipe's); the model is registered under the recipe's name")
    p.add_argument("--replace", action="store_true", help="with --recipe: retrain even if the recipe's model exists")
    p.add_argument("--data", default=None, help="Decathlon folder (dataset.json), folder of image/label pairs, CSV (image,label[,split]), "
                   "or medmnist:FLAG[_SIZE] (e.g. medmnist:pneumoniamnist, medmnist:pneumoniamnist_64)")
    p.add_argument("--task", default=DEFAULTS.task, choices=["segmentation", "classification", "multilabel", "regression"],
                   help="multilabel: classes that may co-occur (CSV label cell 'a;b'), one sigmoid output each")
    p.add_argument("--network", default=None, help="unet, segresnet, dynunet (segmentation); densenet121, resnet (classification)")
    p.add_argument("--network-args", default=None, help='JSON overriding network arguments, e.g. \'{"channels": [8, 16, 32], "strides": [2, 2]}\'')
    p.add_argument("-o", "--output", default=None, help="model folder (required unless --recipe) to write (medai.json, model.pt, split.json, history.csv, plots)")
    p.add_argument("--from", dest="finetune_from", default=None, help="fine-tune this model (catalog name or card) with a lower learning rate")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="patches (segmentation) or images per step")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="AdamW learning rate (x0.1 when fine-tuning)")
    p.add_argument("--roi", default=None, help="patch size (segmentation) or input size (classification), e.g. 96,96,96; two values train a 2D model on single-slice images")
    p.add_argument("--spacing", default=None, help="resample to this voxel size in mm, e.g. 1.5,1.5,2")
    p.add_argument("--intensity", default="nonzero_zscore",
                   help="normalisation: zscore, nonzero_zscore, percentile, or a JSON list of card intensity ops")
    p.add_argument("--augment", default=None, help="comma-separated augmentation (affine,flip,intensity,noise,smooth; default all) or 'none'")
    p.add_argument("--samples-per-case", type=int, default=DEFAULTS.samples_per_case)
    p.add_argument("--steps-per-epoch", type=int, default=DEFAULTS.steps_per_epoch)
    p.add_argument("--val-every", type=int, default=DEFAULTS.val_every, help="validate every N epochs")
    p.add_argument("--patience", type=int, default=DEFAULTS.patience, help="stop after this many validations without improvement")
    p.add_argument("--split", default=",".join(str(f) for f in DEFAULTS.split), help="train,validation,test fractions when the data gives no split")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--crop-foreground", action="store_true", help="training only: crop cases to the labelled region plus a margin")
    p.add_argument("--region-margin", type=float, default=None,
                   help="classification: margin added around a region at inference, as a fraction of its size (0 for patch classifiers)")
    p.add_argument("--denoise", choices=["median", "gaussian"], default=None, help="denoise inputs before normalisation; written into the card, so inference does the same")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint_last.pt")
    p.add_argument("--data-note", default=None, help="a sentence about the data for the card (e.g. that labels are derived)")
    p.add_argument("--name", default=None, help="model name in the card (default: the output folder's name)")
    p.add_argument("--device", default=DEFAULTS.device)
    add_trust_argument(p)
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--no-test", action="store_true", help="skip evaluating the test cases at the end")
    p.set_defaults(handler=run)
    _DEFAULTS.update({a.dest: a.default for a in p._actions})


_DEFAULTS: dict = {}


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


def _given(args, dest: str) -> bool:
    """Whether ``--dest`` was given on the command line (differs from its default)."""
    return getattr(args, dest) != _DEFAULTS.get(dest)


def run(args) -> int:
    from ..training import train
    from ..training.data import discover

    settings = {
        "task": args.task, "network": args.network or ("unet" if args.task == "segmentation" else "densenet121"),
        "network_args": json.loads(args.network_args) if args.network_args else {},
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "roi_size": [int(v) for v in _floats(args.roi)] if args.roi else None,
        "spacing": _floats(args.spacing) if args.spacing else None, "intensity": intensity_ops(args.intensity),
        "samples_per_case": args.samples_per_case, "steps_per_epoch": args.steps_per_epoch, "val_every": args.val_every,
        "patience": args.patience, "seed": args.seed, "split": tuple(_floats(args.split)),
        "augmentation": [] if args.augment == "none" else (args.augment.split(",") if args.augment else list(DEFAULTS.augmentation)),
        "device": args.device, "amp": not args.no_amp, "crop_foreground": args.crop_foreground, "denoise": args.denoise,
        "finetune_from": args.finetune_from, "resume": args.resume, "name": args.name, "evaluate_test": not args.no_test,
        "region_margin": args.region_margin, "trust": args.trust,
    }
    if args.recipe:
        return _run_recipe(args, settings)
    if not args.data or not args.output:
        raise ValueError("give --data and -o/--output (or --recipe NAME)")
    check_outputs([Path(args.output) / "medai.json"], [])  # a read-only folder is found now, not after training
    data = discover(args.data, args.task)
    if args.data_note:
        data.description["note"] = args.data_note
    network = settings["network"]
    config = TrainConfig(**settings)  # type: ignore[arg-type]
    if data.description.get("source") == "medmnist":
        print(data.description["description"], file=sys.stderr)
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


def _run_recipe(args, settings: dict) -> int:
    """``--recipe NAME``: the recipe's settings, with the options given on the command line on top."""
    from ..training import recipes

    dests = {"task": "task", "network": "network", "network_args": "network_args", "epochs": "epochs",
             "batch_size": "batch_size", "lr": "lr", "roi_size": "roi", "spacing": "spacing", "intensity": "intensity",
             "samples_per_case": "samples_per_case", "steps_per_epoch": "steps_per_epoch", "val_every": "val_every",
             "patience": "patience", "seed": "seed", "split": "split", "augmentation": "augment", "device": "device",
             "amp": "no_amp", "crop_foreground": "crop_foreground", "denoise": "denoise", "finetune_from": "finetune_from",
             "resume": "resume", "name": "name", "evaluate_test": "no_test", "region_margin": "region_margin", "trust": "trust"}
    overrides = {field: settings[field] for field, dest in dests.items() if _given(args, dest)}
    recipe = recipes.get(args.recipe)
    data = args.data or recipe["data"]
    out = Path(args.output) if args.output else recipes.output_folder(recipe)
    print(f"recipe {recipe['name']}: {recipe.get('title', '')}\n  data {data}; model -> {out}", file=sys.stderr)
    start = time.perf_counter()
    with ProgressBar(f"train {recipe['name']}") as bar:
        result, training_data, recipe = recipes.run(args.recipe, out, data, overrides,
                                                    callback=lambda e: bar(e.fraction, e.text()), replace=args.replace)
    print(training_data.description.get("description") or training_data.description.get("name", ""))
    print(f"{out}: {result.stopped} after {len(result.history)} epoch(s), {(time.perf_counter() - start) / 60:.1f} min; "
          f"best validation {result.metric_name} {result.best_metric if result.best_metric is None else round(result.best_metric, 4)} "
          f"(epoch {result.best_epoch})")
    for line in recipes.report_lines(recipe, result.test_summary):
        print("  " + line)
    if result.card_path:
        print(f"use it: medai classify IMAGE -m {recipe['name']} -o scores.csv --explain heatmap.nii.gz "
              f"(report and plots in {out / 'test'})")
    return 0 if result.card_path else 1
