"""First-run check for PyTorch and MONAI, and their installation after asking the user.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` when it is there (it picks the CUDA
build that matches the driver), else from ``slicer.packaging`` / ``slicer.util.pip_install``.
A working torch is never replaced: MONAI and the rest are installed with torch held back.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

TORCH_REQUIREMENT = "torch>=2.0"
# What medai needs besides torch (numpy and SimpleITK ship with Slicer).
OTHER_REQUIREMENTS = {"monai": "monai>=1.4", "scipy": "scipy", "tqdm": "tqdm", "nibabel": "nibabel",
                      "cc3d": "connected-components-3d==4.1.1", "fill_voids": "fill-voids==2.1.2"}


@dataclass
class InstallPlan:
    """What is missing; ``torch`` is True only when torch cannot be imported at all."""

    torch: bool = False
    others: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return self.torch or bool(self.others)

    def describe(self) -> str:
        items = ([TORCH_REQUIREMENT + " (through the PyTorch extension when installed)"] if self.torch else []) + self.others
        return "MedAI needs these Python packages, which are not installed yet:\n  " + "\n  ".join(items)


def plan_install(find_spec: Callable[[str], object] = importlib.util.find_spec) -> InstallPlan:
    """Which of torch, monai and the other requirements are missing (nothing is imported)."""
    return InstallPlan(
        torch=find_spec("torch") is None,
        others=[req for module, req in OTHER_REQUIREMENTS.items() if find_spec(module) is None],
    )


def _install_torch() -> bool:
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is not None
    if hasattr(slicer, "packaging"):
        slicer.packaging.pip_install(TORCH_REQUIREMENT)
    else:
        slicer.util.pip_install(TORCH_REQUIREMENT)
    return importlib.util.find_spec("torch") is not None


def _install_others(requirements: list[str]) -> None:
    import slicer

    if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_install"):
        # skip_packages keeps pip from touching the torch that is there
        slicer.packaging.pip_install(" ".join(requirements), skip_packages=["torch"])
    else:
        # older Slicer: no dependency resolution that could swap torch
        slicer.util.pip_install(["--no-deps", *requirements])


def ensure_dependencies(ask: bool = True, plan: InstallPlan | None = None) -> bool:
    """True when torch and MONAI are importable, installing them after asking if needed."""
    import slicer

    plan = plan or plan_install()
    if not plan.needed:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(plan.describe() + "\n\nInstall them now? This can take several minutes.",
                                                      windowTitle="MedAI: install dependencies"):
        log.info("MedAI: dependency installation declined")
        return False
    with slicer.util.tryWithErrorDisplay("MedAI: installing the Python dependencies failed", waitCursor=True):
        if plan.torch and not _install_torch():
            slicer.util.errorDisplay("PyTorch was not installed; install the PyTorch extension from the Extension Manager and retry.")
            return False
        if plan.others:
            _install_others(plan.others)
        return not plan_install().needed
    return False
