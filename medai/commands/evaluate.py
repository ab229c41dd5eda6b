"""``medai evaluate``: a model on labelled data, or prediction files against reference files."""

from __future__ import annotations

import json
from pathlib import Path

from .progressbar import ProgressBar
from .safety import add_trust_argument, check_outputs


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="compare a model's output (or prediction files) with references; CSV + plots")
    p.add_argument("--model", "-m", default=None, help="model to run (catalog name, card, bundle)")
    p.add_argument("--data", default=None, help="labelled data (as for medai train); with a trained card, its test split is used")
    p.add_argument("--cases", default="test", help="which cases of --data: test (the card's test split when it has one), validation, train or all")
    p.add_argument("--pred", nargs="+", default=None, help="predicted labelmaps (or one CSV of predicted classes)")
    p.add_argument("--ref", nargs="+", default=None, help="reference labelmaps, paired with --pred (or one CSV of true classes)")
    p.add_argument("--task", default=None, choices=["segmentation", "classification", "regression"], help="for --pred/--ref CSVs")
    p.add_argument("-o", "--output", required=True, help="report folder: per_case.csv, summary.csv, metrics.json, PNG plots")
    p.add_argument("--device", default="auto")
    add_trust_argument(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import evaluate as ev

    out = Path(args.output)
    check_outputs([out / "summary.csv"], [*(args.pred or []), *(args.ref or [])])
    if args.pred or args.ref:
        if not (args.pred and args.ref):
            raise ValueError("give both --pred and --ref")
        if args.pred[0].lower().endswith(".csv"):
            report = ev.evaluate_prediction_csv(Path(args.pred[0]), Path(args.ref[0]), out, args.task or "classification")
        else:
            report = ev.evaluate_label_files([Path(p) for p in args.pred], [Path(r) for r in args.ref], out_dir=out)
    else:
        if not (args.model and args.data):
            raise ValueError("give --model and --data, or --pred and --ref")
        from ..models.loader import load_model
        from ..training.data import discover

        model = load_model(args.model, args.device, trust=args.trust)
        data = discover(args.data, model.card.task)
        split = model.card.training.get("split") or {}
        known = set(data.by_id())
        if args.cases == "all":
            ids = sorted(known)
        elif split.get(args.cases) and set(split[args.cases]) <= known:
            ids = list(split[args.cases])
        else:
            given = [c.id for c in data.cases if c.split == args.cases]
            ids = given or sorted(known)
            if not given:
                print(f"no '{args.cases}' split in the card or the data; evaluating all {len(ids)} case(s)")
        with ProgressBar(f"evaluate {model.name}") as bar:
            report = ev.evaluate_model(model, data, ids, out, progress=bar)
    s = report.summary
    if report.task == "segmentation":
        for row in s["per_label"]:
            print(f"{row['label']}: Dice {row['dice']:.4f}, HD95 {row['hd95']:.2f} mm, MSD {row['msd']:.2f} mm, "
                  f"volume difference {row['volume_diff_ml']:+.2f} mL over {row['cases']} case(s)")
    elif report.task == "classification":
        print(f"accuracy {s['accuracy']:.4f}, macro F1 {s['macro']['f1']:.4f}, macro AUC {s['macro']['auc']:.4f} on {s['cases']} case(s)")
        print("confusion matrix (rows true, columns predicted):", json.dumps(s["confusion_matrix"]))
    else:
        print(f"MAE {s['mae']:.4f}, correlation {s['correlation']:.4f} on {s['cases']} case(s)")
    print(f"report: {', '.join(str(f) for f in report.files)}")
    return 0
