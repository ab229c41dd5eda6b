"""Write Resources/Catalog/models.d/model-zoo.json from a clone of Project-MONAI/model-zoo.

Every fact comes from the repository: version, labels and input channels from each bundle's
configs/metadata.json, the zip's published checksum from models/model_info.json, the weight
files' hashes from large_files.yml, licence flags from LICENSE and docs/data_license.txt, GPU
run time from the README's "end2end" row where one is published.

    python scripts/build_zoo_catalog.py /path/to/model-zoo.git [commit] [--also NAME=FOLDER@COMMIT ...]

``--also`` adds a bundle newer than that commit (mindgrab) from FOLDER, laid out like the repository
(``models/NAME/...``; ``models/model_info.json`` if that commit's is at hand), read at COMMIT.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

# CT / MR volume segmentation bundles MedAI's bundle format runs (3D, automatic, no prompts).
BUNDLES = [
    "spleen_ct_segmentation", "swin_unetr_btcv_segmentation", "wholeBody_ct_segmentation",
    "pancreas_ct_dints_segmentation", "pediatric_abdominal_ct_segmentation", "multi_organ_segmentation",
    "renalStructures_UNEST_segmentation", "renalStructures_CECT_segmentation",
    "prostate_mri_anatomy", "brats_mri_segmentation", "wholeBrainSeg_Large_UNEST_segmentation",
]
# Newer than the snapshot above: given with --also (the order of the catalog follows this list after BUNDLES).
NEWER = ["mindgrab"]
# Channel names a bundle's README gives where its metadata.json does not (quoted in the README).
CHANNELS = {
    # "Input is artery, vein, excretory phases after mutual registration and concatenated to 3 channel 3D tensor."
    "renalStructures_CECT_segmentation": ["CT arterial phase", "CT venous phase", "CT excretory phase"],
    # metadata: modality "any", channel "image"; README: "removes non-brain tissue from a 3D medical image"
    "mindgrab": ["head image (any modality)"],
}
NOTES = {
    "renalStructures_CECT_segmentation": "Three registered contrast phases (arterial, venous, excretory), cropped to the kidney region, as the bundle README describes.",
    "wholeBrainSeg_Large_UNEST_segmentation": "Needs a T1w MRI already registered (affine) to the MNI305 template (bundle README: "
    "\"The data should be in the MNI305 space before inference.\"); MedAI does not register it for you.",
    "pancreas_ct_dints_segmentation": "The bundle's config hard-codes CUDA; MedAI runs it on the device you pick.",
    "mindgrab": "MedAI gives the brain mask (the bundle itself writes the input with non-brain voxels set to the image "
    "minimum). Whole-volume inference on a 256x256x256 grid: slow on a CPU.",
}


def git(repo: str, commit: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True).stdout


def show(repo: str, commit: str, path: str) -> str | None:
    """A file of the repository at ``commit``: from a git directory, or from a folder laid out like the repository."""
    if (Path(repo) / "models").is_dir():
        file = Path(repo) / path
        return file.read_text() if file.is_file() else None
    try:
        return git(repo, commit, "show", f"{commit}:{path}")
    except subprocess.CalledProcessError:
        return None


def large_files(text: str | None) -> list[dict]:
    """The entries of a large_files.yml (path, url, hash_val, hash_type); its flat layout needs no YAML library."""
    out: list[dict] = []
    for line in (text or "").splitlines():
        found = re.match(r"\s*(-\s*)?(path|url|hash_val|hash_type):\s*\"?([^\"]*)\"?\s*$", line)
        if not found:
            continue
        if found.group(1) or not out:
            out.append({"path": "", "url": "", "hash_val": "", "hash_type": ""})
        out[-1][found.group(2)] = found.group(3).strip()
    return out


def licence(repo: str, commit: str, base: str, meta: dict) -> tuple[str, str | None]:
    code = (show(repo, commit, f"{base}/LICENSE") or "").strip()
    data = show(repo, commit, f"{base}/docs/data_license.txt") or ""
    first = code.splitlines()[0].strip() if code else ""
    flag = None
    text = code + "\n" + data
    if re.search(r"non-?commercial", text, re.I):
        flag = "non-commercial"
    elif re.search(r"data usage agreement|data use agreement", text, re.I):
        flag = "data-use agreement"
    heads = [line.strip() for line in code.splitlines() if re.fullmatch(r"[\w .-]{1,40} License", line.strip())]
    if "Apache License" in first:
        summary = "Apache-2.0 (bundle code and weights)"
    elif len(heads) > 1:  # mindgrab: MIT and BSD 2-Clause back to back
        summary = " and ".join(heads) + " (bundle LICENSE)"
    else:
        summary = first or meta.get("license", "see the bundle's LICENSE")
    if data:
        summary += "; training data under its own terms (docs/data_license.txt)"
    return summary, flag


def gpu_time(readme: str) -> str:
    row = re.search(r"\|\s*end2end\s*\|\s*([\d.]+)\s*\|", readme)
    if not row:
        return "not measured"
    where = re.search(r"observed on an? ([^.]*?GPU)", readme)
    return f"{float(row.group(1)) / 1000:.1f} s end-to-end, PyTorch fp32" + (f", {where.group(1)}" if where else "") + " (bundle README)"


def labels_from(meta: dict, infer: str) -> dict[str, str]:
    out = meta["network_data_format"]["outputs"]["pred"]
    chans = {str(k): v for k, v in (out.get("channel_def") or {}).items()}
    if chans:
        if any(str(v).lower() == "background" for v in chans.values()):
            return {k: v for k, v in chans.items() if str(v).lower() != "background"}
        return {str(int(k) + 1): v for k, v in chans.items()}  # sigmoid channels become values 1..n
    # no channel_def (pediatric): the inference config's `labels:` mapping
    found = re.search(r"^labels:\n((?:\s+\S+: \d+\n)+)", infer, re.M)
    if found:
        pairs = re.findall(r"\s+(\S+): (\d+)", found.group(1))
        return {v: k for k, v in pairs if int(v) > 0}
    return {}


def entry(repo: str, commit: str, name: str, info: dict) -> dict:
    base = f"models/{name}"
    meta = json.loads(show(repo, commit, f"{base}/configs/metadata.json"))
    version = meta["version"]
    infer = show(repo, commit, f"{base}/configs/inference.json") or show(repo, commit, f"{base}/configs/inference.yaml") or ""
    readme = show(repo, commit, f"{base}/docs/README.md") or ""
    image = meta["network_data_format"]["inputs"]["image"]
    modality = {"MRI": "MR"}.get(image.get("modality"), image.get("modality", ""))
    channel_def = image.get("channel_def") or {"0": "image"}
    n = int(image.get("num_channels", 1))
    names = CHANNELS.get(name) or [channel_def.get(str(i), f"channel {i}") for i in range(n)]
    inputs = [{"channel": i, "name": (modality if nm == "image" else nm), "modality": modality} for i, nm in enumerate(names)]
    lic, flag = licence(repo, commit, base, meta)
    published = info.get(f"{name}_v{version}", {})
    files = large_files(show(repo, commit, f"{base}/large_files.yml") or show(repo, commit, f"{base}/large_files.yaml"))
    desc = meta.get("description", "")
    if name in NOTES:
        desc += " " + NOTES[name]
    return {
        "name": name,
        "title": meta.get("name", name),
        "description": desc,
        "task": "segmentation",
        "body_part": meta.get("task", ""),
        "modality": modality,
        "version": version,
        "license": lic,
        "license_flag": flag,
        "source": {"zoo": name, "version": version, "sha1": published.get("checksum", ""),
                   "published_zip": published.get("source", "")},
        "large_files": files,
        "inputs": inputs,
        "input_note": meta.get("image_classes", ""),
        "labels": labels_from(meta, infer),
        "runtime": {"cpu": "not measured", "gpu": gpu_time(readme)},
        "intended_use": meta.get("intended_use", ""),
        "requires_registration": "MNI305" if name == "wholeBrainSeg_Large_UNEST_segmentation" else None,
    }


def main() -> None:
    args = sys.argv[1:]
    also = dict(a.split("=", 1) for a in args[args.index("--also") + 1:]) if "--also" in args else {}
    args = args[:args.index("--also")] if "--also" in args else args
    repo = args[0]
    commit = args[1] if len(args) > 1 else "HEAD"
    sha = git(repo, commit, "rev-parse", commit).strip()
    info = json.loads(show(repo, commit, "models/model_info.json"))
    models = [entry(repo, commit, n, info) for n in BUNDLES]
    sources = [f"github.com/Project-MONAI/model-zoo@{sha}"]
    for name in [n for n in NEWER if n in also]:
        folder, newer = also[name].rsplit("@", 1)
        newer_info = json.loads(show(folder, newer, "models/model_info.json") or "{}")
        models.append(entry(folder, newer, name, newer_info))
        models[-1]["source"]["commit"] = newer
        sources.append(f"{name}@{newer}" + ("" if newer_info else " (its models/model_info.json was not at hand: no published checksum)"))
    out = Path(__file__).resolve().parents[1] / "Resources" / "Catalog" / "models.d" / "model-zoo.json"
    doc = {"generated_from": "; ".join(sources) + " by scripts/build_zoo_catalog.py", "models": models}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out}: {len(models)} bundles")


if __name__ == "__main__":
    main()
