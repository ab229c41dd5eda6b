"""Write Resources/Catalog/models.d/auto3dseg.json from SlicerMONAIAuto3DSeg's Resources/Models.json.

Usage: python scripts/build_auto3dseg_catalog.py PATH/TO/Models.json [COMMIT]

Every model of that file becomes one MedAI catalog entry (its newest version; older versions are
listed under ``previous_versions``). Nothing is invented: titles, descriptions, licences, inputs,
segment names and run times are the file's own; ``license_flag`` marks entries whose weights have
no stated licence or come with dataset terms.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "Resources" / "Catalog" / "models.d" / "auto3dseg.json"
URL_RE = re.compile(r"(?P<filename>[^/]+)-v(?P<version>\d+\.\d+\.\d+)")  # as MONAIAuto3DSegLib/model_database.py parses it
LICENSES = {"CC-BY-SA4.0": "CC BY-SA 4.0"}


def _flag(model: dict) -> str | None:
    lic = model.get("license")
    if not lic:
        return "no licence stated for these weights in SlicerMONAIAuto3DSeg's Models.json; ask the model authors before commercial or clinical use"
    if "brats" in lic.lower():
        return "trained on BraTS challenge data: the BraTS datasets' terms of use apply (cite them; check them before commercial use)"
    return None


def _inputs(model: dict) -> list[dict]:
    raw = model.get("inputs") or [{"title": "Input volume"}]
    out = []
    for channel, item in enumerate(raw):
        entry = {"channel": channel, "name": item["title"].removeprefix("Input ").removesuffix(" volume") or "volume",
                 "title": item["title"], "modality": model["imagingModality"]}
        if item.get("namePattern"):
            entry["name_pattern"] = item["namePattern"]
        out.append(entry)
    if len(out) == 1 and out[0]["name"] == "volume":
        out[0]["name"] = model["imagingModality"]
    return out


def build(models_json: Path, commit: str = "") -> dict:
    models = json.loads(models_json.read_text())["models"]
    parsed = []
    for model in models:
        versions = []
        for v in model["versions"]:
            m = URL_RE.search(v["url"])
            if not m:
                raise ValueError(f"cannot read model id and version from {v['url']}")
            versions.append((m["filename"], m["version"], v["url"]))
        parsed.append((model, versions))
    shared = Counter(versions[0][0] for _, versions in parsed)
    entries = []
    for model, versions in parsed:
        filename, version, url = versions[0]
        name = f"auto3dseg-{filename}" + (f"-v{version.split('.')[0]}" if shared[filename] > 1 else "")
        lic = model.get("license") or ""
        entries.append({
            "name": name,
            "title": model["title"],
            "description": model["description"],
            "task": "segmentation",
            "format": "auto3dseg",
            "modality": model["imagingModality"],
            "subject": model.get("subject", ""),
            "version": version,
            "extension_id": f"{filename}-v{version}",
            "license": LICENSES.get(lic, lic) or "not stated",
            "license_flag": _flag(model),
            "source": {"url": url},
            "previous_versions": [{"version": v, "url": u} for _, v, u in versions[1:]],
            "inputs": _inputs(model),
            "segments": list(model.get("segmentNames") or []),
            "runtime": {
                "cpu": f"{model['segmentationTimeSecCPU']} s (SlicerMONAIAuto3DSeg model test results)",
                "gpu": f"{model['segmentationTimeSecGPU']} s (SlicerMONAIAuto3DSeg model test results)",
            },
            "slicer_sample_data": list(model.get("sampleData") or []),
        })
    names = [e["name"] for e in entries]
    assert len(set(names)) == len(names), "duplicate catalog names"
    return {"generated_from": f"github:lassoan/SlicerMONAIAuto3DSeg{'@' + commit if commit else ''}:MONAIAuto3DSeg/Resources/Models.json",
            "models": entries}


if __name__ == "__main__":
    data = build(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(data['models'])} models")
