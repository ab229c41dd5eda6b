"""`medai --help` and `medai models` answer without importing torch, MONAI, SimpleITK or scipy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "monai", "SimpleITK", "scipy", "numpy")

PROBE = """
import json, sys
from medai import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["segment", "--help"], ["classify", "--help"], ["train", "--help"]])
def test_light_commands_do_not_import_torch(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert report["heavy"] == [], f"medai {' '.join(argv)} imported {report['heavy']}"
    assert proc.stdout.strip()  # it answered
    if argv == ["models"]:
        assert "deepbet-brain" in proc.stdout


def test_classify_rejects_an_unknown_explanation_method(tmp_path, capsys):
    from medai import cli

    assert cli.main(["classify", str(tmp_path / "x.nii.gz"), "--model", "m", "-o", str(tmp_path / "o.csv"), "--method", "shap"]) == 1
    assert "--method 'shap' unknown; use one of gradcam" in capsys.readouterr().err
