"""The first-run installer's decisions (MedAILib.dependencies), run with Slicer's own util.py and packaging.py.

Slicer 5.12+ (``slicer.packaging`` importable but not yet imported) and 5.10 (none). The pip
subprocess itself is the boundary: ``pip_install`` is replaced by a recorder (no package is
installed); everything above it, including ``slicer.packaging.pip_ensure``'s own checks of what is
installed and of testing mode, is Slicer's real code.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from slicer_python import slicer_python

MISSING = "medai-test-not-installed-package>=1.0"  # no such distribution: pip_check says it is missing


def record(calls: list, name: str, fail: bool = False):
    def pip_install(requirements, *args, **kwargs):
        calls.append((name, requirements, kwargs))
        if fail:
            raise subprocess.CalledProcessError(1, ["pip", "install", str(requirements)])

    return pip_install


def confirm(answers: list, answer: bool = True):
    def confirmOkCancelDisplay(text, *args, **kwargs):
        answers.append(text)
        return answer

    return confirmOkCancelDisplay


def test_slicer_5_12_imports_packaging_and_installs_through_pip_ensure_holding_torch_back():
    with slicer_python(packaging=True) as slicer:
        from MedAILib import dependencies as deps

        assert "packaging" not in vars(slicer), "slicer/__init__ does not import slicer.packaging"
        assert deps.slicer_packaging() is sys.modules["slicer.packaging"]
        calls, asked = [], []
        sys.modules["slicer.packaging"].pip_install = record(calls, "packaging.pip_install")
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        plan = deps.InstallPlan(torch=False, others=["monai>=1.4", MISSING])
        assert deps.ensure_dependencies(plan=plan)  # everything real is installed afterwards
        assert len(asked) == 1 and MISSING in asked[0]
        # pip_ensure (real) dropped the satisfied monai and passed torch as a package to skip
        assert calls == [("packaging.pip_install", [MISSING],
                          {"constraints": None, "skip_packages": ["torch"], "blocking": True,
                           "show_progress": True, "requester": "MedAI"})]
        assert not slicer.shownErrors


def test_slicer_5_10_falls_back_to_util_pip_install_without_dependencies():
    with slicer_python(packaging=False) as slicer:
        from MedAILib import dependencies as deps

        assert deps.slicer_packaging() is None
        calls, asked = [], []
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        assert deps.ensure_dependencies(plan=deps.InstallPlan(torch=True, others=[MISSING]))
        assert calls == [("util.pip_install", "torch>=2.0", {}),
                         ("util.pip_install", ["--no-deps", MISSING], {})]


@pytest.mark.parametrize("packaging", [True, False])
def test_torch_comes_from_pytorchutils_with_the_version_requirement(packaging):
    with slicer_python(packaging=packaging) as slicer:
        from MedAILib import dependencies as deps

        calls, asked = [], []
        logic = types.SimpleNamespace(installTorch=lambda **kwargs: calls.append(("installTorch", kwargs)))
        sys.modules["PyTorchUtils"] = types.SimpleNamespace(PyTorchUtilsLogic=lambda: logic)  # the PyTorch extension
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        assert deps.ensure_dependencies(plan=deps.InstallPlan(torch=True))
        assert calls == [("installTorch", {"askConfirmation": False, "torchVersionRequirement": ">=2.0"})]
        assert len(asked) == 1


@pytest.mark.parametrize("packaging", [True, False])
def test_a_working_torch_is_never_reinstalled(packaging):
    with slicer_python(packaging=packaging) as slicer:
        from MedAILib import dependencies as deps

        calls, asked = [], []
        sys.modules["PyTorchUtils"] = types.SimpleNamespace(
            PyTorchUtilsLogic=lambda: pytest.fail("PyTorchUtils must not be asked for a torch that imports"))
        if packaging:
            sys.modules["slicer.packaging"].pip_install = record(calls, "packaging.pip_install")
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        plan = deps.plan_install()
        assert not plan.torch  # torch is installed here
        assert deps.ensure_dependencies(plan=deps.InstallPlan(torch=plan.torch, others=[MISSING]))
        assert len(calls) == 1
        _, requirements, kwargs = calls[0]
        assert not any(str(r).startswith("torch") for r in requirements)
        assert kwargs.get("skip_packages") == ["torch"] if packaging else requirements[0] == "--no-deps"


@pytest.mark.parametrize("packaging", [True, False])
def test_testing_mode_installs_nothing(packaging):
    with slicer_python(packaging=packaging, testing=True) as slicer:
        from MedAILib import dependencies as deps

        calls, asked = [], []
        if packaging:
            sys.modules["slicer.packaging"].pip_install = record(calls, "packaging.pip_install")
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        assert not deps.ensure_dependencies(plan=deps.InstallPlan(torch=True, others=[MISSING]))
        assert calls == [] and asked == []
        assert deps.ensure_dependencies(plan=deps.InstallPlan())  # nothing missing: True in testing mode too


def test_declined_or_failed_install_returns_false_and_never_raises():
    with slicer_python(packaging=True) as slicer:
        from MedAILib import dependencies as deps

        calls, asked = [], []
        sys.modules["slicer.packaging"].pip_install = record(calls, "packaging.pip_install", fail=True)
        slicer.util.confirmOkCancelDisplay = confirm(asked, answer=False)
        assert not deps.ensure_dependencies(plan=deps.InstallPlan(others=[MISSING]))
        assert calls == [] and len(asked) == 1
        slicer.util.confirmOkCancelDisplay = confirm(asked, answer=True)
        assert not deps.ensure_dependencies(plan=deps.InstallPlan(others=[MISSING]))  # pip failed: no exception
        assert len(calls) == 1
        assert len(slicer.shownErrors) == 1 and "installing the Python dependencies failed" in slicer.shownErrors[0]


def test_torch_still_missing_after_install_is_reported(monkeypatch):
    with slicer_python(packaging=False) as slicer:
        from MedAILib import dependencies as deps

        calls, asked = [], []
        slicer.util.pip_install = record(calls, "util.pip_install")
        slicer.util.confirmOkCancelDisplay = confirm(asked)
        monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") is None: still missing after the install
        assert not deps.ensure_dependencies(plan=deps.InstallPlan(torch=True))
        assert calls == [("util.pip_install", "torch>=2.0", {})]
        assert "PyTorch was not installed" in slicer.shownErrors[0]
