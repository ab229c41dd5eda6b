"""Every example in README.md and docs/*.md runs as written, so the documentation cannot drift.

Each fenced code block is found automatically (new blocks in any ``docs/*.md`` are picked up) and
becomes one test:

* ``bash``/``sh``/``console`` blocks, and unlabelled blocks whose lines are ``medai`` commands, run
  line by line in a sandbox folder: ``medai ...`` and ``.venv/bin/medai ...`` through
  :func:`medai.cli.main` in this process (exit code 0 required), anything else with ``bash``;
* ``python`` blocks run in a fresh interpreter in the sandbox;
* ``json`` blocks must parse; blocks in other languages (text, csv, ...) are not code and are skipped.

A block or a line that cannot run here is listed in ``SKIP_BLOCKS`` / ``SKIP_LINES`` below with the
reason; an entry that no longer matches any block fails ``test_skip_lists_are_current``. Where the
real data or model would take too long, the sandbox provides small files under the documented
names (``t1.nii.gz``, ``chest.png``, ``DATA``, ``Task09_Spleen``, ``labels.csv``, ...) and
``SUBSTITUTIONS`` rewrites a few arguments (each with its reason) before a block runs. MedMNIST
downloads go to a local server holding tiny MedMNIST-format files (``$MEDAI_MEDMNIST_URL``).

A new example that fails here: fix the example, give it small data in ``sandbox``, or list it with a reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_unet_card

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
NOT_CODE = {"text", "txt", "csv", "yaml", "yml", "xml", "ini", "toml", "markdown", "md", "diff", "cmake"}

# (file relative to the repository, start of the block's first line) -> why the block is not run here
SKIP_BLOCKS = {
    ("README.md", "bash scripts/demo.sh"):
        "creates .venv with pip and runs the full demo and test suite (minutes); test_default_model.py runs the demo pipeline",
    ("docs/slicer.md", "git clone https://github.com/medai-slicer/SlicerMedAI.git"):
        "needs a Slicer build tree, CMake and network access; the modules' self-tests run in CI of the extension",
    ("docs/slicer.md", "import slicer"):
        "runs inside the Slicer application (module logic, MRHead sample data); the same logic calls are tested headless in test_module_*.py",
    ("docs/slicer.md", 'logic = slicer.util.getModuleLogic("MedAIClassify")     # or: from MedAIClassify import MedAIClassifyLogic'):
        "runs inside the Slicer application (module logic, the reader's nodes); tested headless in test_module_classify_jobs.py",
    ("docs/slicer.md", "from medai.slicer.segment_logic import SegmentLogic"):
        "a fragment on the reader's nodes (volume, model, roiNode); the runners are tested in test_module_jobs.py / test_module_classify_jobs.py",
    ("docs/dicom.md", "from medai.slicer.dicom_export import export_dicom_seg"):
        "a fragment on the reader's nodes (segmentationNode, loadedModel) and DICOM database; tested headless in test_dicom_slicer.py",
    ("docs/batch.md", "from medai.batch import run_batch"):
        "a fragment on the reader's nodes (node1, t1Node, ...); run_batch and both cohort APIs are tested in test_batch.py",
    ("docs/nnunet.md", ".venv/bin/python -m pip install --no-deps -r requirements-nnunet.txt"):
        "scripts/setup.sh runs this very command before the tests (the sandbox has no requirements file)",
    ("docs/slicer.md", "from medai.slicer import panel"):
        "a fragment on the reader's scene (segmentations, tableNode, /data folders); tested in test_module_train_jobs.py",
}
# (file, start of a line inside a block that runs) -> why that one line is not run
SKIP_LINES = {
    ("docs/nnunet.md", "medai segment ct.nii.gz -m ~/nnUNet_results/"):
        "a placeholder result folder of the reader's; a real nnU-Net v2 folder made in the test runs through the CLI in test_nnunet.py",
    ("README.md", ".venv/bin/medai classify CT_SERIES/ -m model.json"):
        "needs a 3D classifier for CT; classify --sr is tested in test_dicom_cli.py",
    ("docs/dicom.md", "medai segment CT_SERIES/ -m my_model"): "my_model is a placeholder; LABELMAP SEG is tested in test_dicom_io.py",
    ("docs/dicom.md", "medai classify CT_SERIES/ -m my_classifier"): "my_classifier is a placeholder; classify --sr is tested in test_dicom_cli.py",
    ("docs/dicom.md", "medai segment STUDY_FOLDER/ --series"): "a placeholder folder and UID; --series is tested in test_dicom_io.py",
    ("docs/dicom.md", "medai evaluate --pred brain.nii.gz --ref reference_seg.dcm"):
        "a placeholder reference SEG; evaluation against a SEG is tested in test_dicom_cli.py",
    ("docs/batch.md", ".venv/bin/medai batch studies/ -m my-classifier.json"): "a placeholder classifier; --task classify is tested in test_batch.py",
    ("docs/batch.md", ".venv/bin/medai batch studies/ -m deepbet-brain -o out/ --workers 4"):
        "four processes each loading torch (minutes on 2 loaded cores); --workers 2 is tested in test_batch.py",
    ("docs/batch.md", ".venv/bin/medai batch studies/ -m deepbet-brain -o out/ --ray auto"):
        "needs a running Ray cluster; a local Ray instance is tested in test_batch.py",
    ("README.md", ".venv/bin/medai demo -o out"):
        "runs the 256^3 deepbet networks on the 1 mm MNI152 (minutes on CPU); test_default_model.py runs the demo",
    ("README.md", ".venv/bin/medai classify ct1.nii.gz ct2.nii.gz --model model.onnx"):
        "needs an ONNX classifier; ONNX, --region and --findings are tested in test_classify_models.py and test_classify_explain.py",
    ("docs/training.md", "medai train ... -o models/spleen --resume"): "the options are elided ('...'); --resume is tested in test_train.py",
}
# (pattern, replacement, why): applied to every block before it runs
SUBSTITUTIONS = [
    (r"(?<![\w/.-])deepbet-brain(?![\w-])", "{tiny_card}",
     "the default model's 128^3 + 256^3 networks take minutes on CPU; a tiny UNet card stands in"),
    (r"--epochs \d+", "--epochs 1 --steps-per-epoch 1", "one short epoch instead of a real training run"),
    (r"--network densenet121", "--network resnet",
     "a DenseNet121 step takes about a minute on 2 loaded CPU cores; both networks come from the same network_config (medai/training/networks.py)"),
    (r"--roi 96,96,96", "--roi 16,16,16", "small patches for the tiny sandbox volumes"),
    (r"--roi 64,64,64", "--roi 32,32,32", "small inputs for the tiny sandbox volumes"),
    (r"--roi 224,224", "--roi 32,32", "small inputs for the tiny sandbox images"),
    (r"--recipe pneumonia(?![\w-])", "--recipe pneumonia --epochs 1 --batch-size 8 --replace",
     "one epoch on the tiny local PneumoniaMNIST file; --replace because the sandbox may hold the model from an earlier example"),
]
if not torch.cuda.is_available():
    SUBSTITUTIONS.append((r"--device cuda(:\d+)?", "--device cpu", "no GPU on this machine"))
SUBSTITUTIONS.append((r"--device auto", "--device cpu", "keep the docs test on the CPU"))


@dataclass
class Block:
    file: str
    line: int
    lang: str
    text: str

    @property
    def first(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")

    @property
    def kind(self) -> str:
        if self.lang in SHELL:
            return "shell"
        if self.lang in ("python", "py", "pycon"):
            return "python"
        if self.lang == "json":
            return "json"
        if not self.lang:
            commands = [ln.strip() for ln in self.text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            if commands and all(re.match(r"(\.venv/bin/)?medai |bash |python ", c) or c.startswith("--") or
                                 commands[n - 1].endswith("\\") for n, c in enumerate(commands)):
                return "shell"
        return "other"


def blocks() -> list[Block]:
    found = []
    for path in DOC_FILES:
        lines = path.read_text().splitlines()
        n = 0
        while n < len(lines):
            m = re.match(r"^(\s*)```\s*([\w+-]*)", lines[n])
            if m:
                start, lang, body = n + 1, m.group(2).lower(), []
                n += 1
                while n < len(lines) and not lines[n].strip().startswith("```"):
                    body.append(lines[n][len(m.group(1)):])
                    n += 1
                found.append(Block(str(path.relative_to(REPO)), start, lang, "\n".join(body)))
            n += 1
    return found


BLOCKS = blocks()


def _commands(text: str) -> list[str]:
    """Shell lines with backslash continuations joined; comment-only and empty lines dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


# --- the sandbox: small files under the names the examples use ---------------------------------


def _volume(shape=(24, 24, 24), seed=0, blob=True):
    from medai.geometry import Volume

    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 10, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    if blob:
        c = np.array(shape) // 2 + rng.integers(-2, 3, 3)
        zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
        lab[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 36] = 1
        arr[lab > 0] += 80
    affine = np.diag([-1.5, -1.5, 1.5, 1.0])
    return Volume(arr, affine, "v"), Volume(lab, affine, "l")


def _make_sandbox(root: Path) -> dict:
    from PIL import Image

    from classify_helpers import keras_pneumonia_card  # noqa: F401  (import check: helpers present)
    from medai.io import write_volume

    root.mkdir(parents=True, exist_ok=True)
    tiny_card = write_unet_card(root / "_tiny" / "tiny-unet")
    write_unet_card(root / "my_bundle", in_channels=3)
    img, lab = _volume(seed=1)
    for name in ("t1.nii.gz", "t1.nrrd", "t2.nrrd", "flair.nrrd", "ct1.nii.gz", "ct2.nii.gz"):
        write_volume(img, root / name)
    write_volume(lab, root / "lesion.nii.gz")
    for stem in ("a", "b"):  # evaluate --pred/--ref pairs
        write_volume(lab, root / f"{stem}_ref.nii.gz")
        write_volume(lab, root / f"{stem}.nii.gz", np.roll(lab.array, 1, axis=0))
    # segmentation data: DATA and more_data/ (image/label pairs), Task09_Spleen (Decathlon)
    for folder in ("DATA", "more_data"):
        for n in range(4):
            i, l_ = _volume(seed=10 + n)
            write_volume(i, root / folder / "images" / f"case{n}.nii.gz")
            write_volume(l_, root / folder / "labels" / f"case{n}.nii.gz")
    entries = {"training": [], "validation": [], "test": []}
    for n, key in enumerate(["training", "training", "validation", "test"]):
        i, l_ = _volume(seed=20 + n)
        write_volume(i, root / "Task09_Spleen" / "imagesTr" / f"spleen_{n}.nii.gz")
        write_volume(l_, root / "Task09_Spleen" / "labelsTr" / f"spleen_{n}.nii.gz")
        entries[key].append({"image": f"./imagesTr/spleen_{n}.nii.gz", "label": f"./labelsTr/spleen_{n}.nii.gz"})
    (root / "Task09_Spleen" / "dataset.json").write_text(json.dumps(
        {"name": "Spleen (sandbox)", "labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"}, **entries}))
    # classification CSVs: 3D patches (labels.csv), multi-label (findings.csv), 2D X-rays (xrays.csv)
    rows3, rowsm, rows2 = [], [], []
    for n in range(8):
        split = ["train", "train", "train", "train", "validation", "validation", "test", "test"][n]
        cls = ["cyst", "solid"][n % 2]
        vol, _ = _volume((32, 32, 32), seed=30 + n, blob=cls == "solid")
        write_volume(vol, root / "patches" / f"p{n}.nii.gz")
        rows3.append({"image": f"patches/p{n}.nii.gz", "label": cls, "split": split})
        rowsm.append({"image": f"patches/p{n}.nii.gz", "label": "a;b" if n % 3 == 0 else ("a" if n % 2 else "b"), "split": split})
        pic = np.random.default_rng(n).integers(40, 60, (40, 40)).astype(np.uint8)  # noise: a constant image is refused
        if n % 2:
            pic[10:30, 5:20] = 200
        Image.fromarray(pic).save(root / "xr" / f"x{n}.png") if (root / "xr").is_dir() else ((root / "xr").mkdir(),
                                                                                             Image.fromarray(pic).save(root / "xr" / f"x{n}.png"))
        rows2.append({"image": f"xr/x{n}.png", "label": ["normal", "pneumonia"][n % 2], "split": split})
    for name, rows in (("labels.csv", rows3), ("findings.csv", rowsm), ("xrays.csv", rows2)):
        with open(root / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
            w.writeheader()
            w.writerows(rows)
    for name, col in (("predictions.csv", "predicted"), ("truth.csv", "label")):
        with open(root / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["case", col])
            w.writeheader()
            w.writerows({"case": f"c{n}", col: ["cyst", "solid"][(n + (name == "predictions.csv" and n == 3)) % 2]} for n in range(6))
    chest = np.full((64, 64), 40, np.uint8)
    chest[20:44, 8:30] = 220
    Image.fromarray(chest).save(root / "chest.png")
    from test_radiograph import write_dicom

    write_dicom(root / "chest.dcm", chest.astype(np.uint16))
    from dicom_helpers import write_series

    write_series(img, root / "CT_SERIES")  # a DICOM series folder (README, docs/dicom.md)
    for n in range(2):  # a cohort folder (medai batch)
        write_volume(_volume(seed=40 + n)[0], root / "studies" / f"case{n}.nii.gz")
    (root / "cohort.csv").write_text("case,image,image2,image3\nc1,t1.nrrd,t2.nrrd,flair.nrrd\n")  # my_bundle takes 3 channels
    return {"tiny_card": str(tiny_card)}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from test_medmnist import md5, serve, tiny_npz

    from medai.training import medmnist

    root = tmp_path_factory.mktemp("docs") / "work"
    values = _make_sandbox(root)
    mirror = root.parent / "mirror"
    mirror.mkdir()
    files = {("pneumoniamnist", 64): tiny_npz(mirror / "pneumoniamnist_64.npz"),
             ("breastmnist", 28): tiny_npz(mirror / "breastmnist.npz", seed=3)}
    (root / ".venv").symlink_to(Path(sys.prefix))  # `.venv/bin/medai` as written
    env = {"MEDAI_HOME": str(root.parent / "home")}
    with serve(mirror) as (url, _), pytest.MonkeyPatch.context() as mp:
        env[medmnist.MIRROR_ENV] = url
        for key, value in env.items():
            mp.setenv(key, value)
        for (flag, size), path in files.items():  # the tiny files' MD5s in place of the published ones (local data)
            mp.setitem(medmnist.DATASETS[flag]["md5"], size, md5(path))
        mp.chdir(root)
        yield root, values, env


def _prepare(block: Block, values: dict) -> str:
    text = block.text
    for pattern, replacement, _why in SUBSTITUTIONS:
        text = re.sub(pattern, replacement.format(**values), text)
    return text


def _run_shell(command: str, root: Path, env: dict) -> None:
    from medai.cli import main

    words = shlex.split(command, comments=True)
    if words and words[0] in ("medai", ".venv/bin/medai"):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(words[1:])
        assert code == 0, f"`{command}` exited {code}\n{out.getvalue()[-2000:]}\n{err.getvalue()[-2000:]}"
        return
    proc = subprocess.run(["bash", "-c", command], cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{command}` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _skip_reason(block: Block) -> str | None:
    for (file, first), reason in SKIP_BLOCKS.items():
        if block.file == file and block.first.startswith(first):
            return reason
    if block.kind == "other":
        return f"not a command or Python ({block.lang or 'no language'}): nothing to run"
    return None


def _param(block: Block):
    """Blocks that train (several short runs each) are marked slow: minutes on 2 loaded CPU cores."""
    slow = re.search(r"medai train ", block.text) is not None
    return pytest.param(block, id=f"{block.file}:{block.line}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_documented_example_runs(block: Block, sandbox):
    reason = _skip_reason(block)
    if reason:
        pytest.skip(reason)
    root, values, env = sandbox
    text = _prepare(block, values)
    if block.kind == "json":
        json.loads(text)
        return
    if block.kind == "python":
        proc = subprocess.run([sys.executable, "-c", text], cwd=root, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{block.file}:{block.line} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return
    original = _commands(block.text)
    for raw, command in zip(original, _commands(text)):
        if any(block.file == f and raw.startswith(prefix) for f, prefix in SKIP_LINES):
            continue
        _run_shell(command, root, env)


def test_skip_lists_are_current():
    """Every listed block or line still exists (a stale entry would hide a changed example), and the
    examples this issue fixed are run, not skipped."""
    assert not [k for k in SKIP_BLOCKS if not any(b.file == k[0] and b.first.startswith(k[1]) for b in BLOCKS)]
    lines = {(b.file, c) for b in BLOCKS for c in _commands(b.text)}
    assert not [k for k in SKIP_LINES if not any(f == k[0] and c.startswith(k[1]) for f, c in lines)]
    readme = [b for b in BLOCKS if b.file == "README.md"]
    assert any("load_volume" in b.text and b.kind == "python" and not _skip_reason(b) for b in readme)
    assert not any("pneumonia/medai.json" in b.text for b in BLOCKS)
    assert any("--recipe pneumonia" in b.text and not _skip_reason(b) for b in BLOCKS)
