"""First-run check for PyTorch and MONAI, and their installation after asking the user.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` when it is there (it picks the CUDA
build that matches the driver), else from pip. The rest comes from ``slicer.packaging.pip_ensure``
(Slicer 5.12 and later: progress dialog, restart prompt, nothing installed in testing mode) with
torch held back, or on older Slicer from ``slicer.util.pip_install`` with ``--no-deps``. A working
torch is never replaced, and in testing mode (the self-tests) nothing is installed at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

TORCH_VERSION = ">=2.0"  # PyTorchUtils' torchVersionRequirement: appended to "torch"
TORCH_REQUIREMENT = "torch" + TORCH_VERSION
# What medai needs besides torch (numpy and SimpleITK ship with Slicer).
OTHER_REQUIREMENTS = {"monai": "monai>=1.4", "scipy": "scipy", "tqdm": "tqdm", "nibabel": "nibabel",
                      "cc3d": "connected-components-3d==4.1.1", "fill_voids": "fill-voids==2.1.2"}
REQUESTER = "MedAI"


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
    importlib.invalidate_caches()  # packages installed in this session are found
    return InstallPlan(
        torch=find_spec("torch") is None,
        others=[req for module, req in OTHER_REQUIREMENTS.items() if find_spec(module) is None],
    )


def slicer_packaging():
    """``slicer.packaging`` (Slicer 5.12 and later), or None on older Slicer.

    Imported, not looked up: ``slicer/__init__`` does not import it, so ``hasattr(slicer, "packaging")``
    is False until something else has imported it.
    """
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def testing_enabled() -> bool:
    """True while Slicer runs its self-tests (``slicer.app.testingEnabled()``)."""
    import slicer

    app = getattr(slicer, "app", None)
    return bool(app is not None and hasattr(app, "testingEnabled") and app.testingEnabled())


def _install_torch() -> None:
    """PyTorch through the PyTorch extension (driver-matched CUDA build) when it is there, else through pip."""
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION)
        return
    packaging = slicer_packaging()
    (packaging.pip_install if packaging is not None else slicer.util.pip_install)(TORCH_REQUIREMENT)


def _install_others(requirements: list[str]) -> None:
    """MONAI and the rest, never touching the torch that is there."""
    import slicer

    packaging = slicer_packaging()
    if packaging is not None:
        # the user was asked already; pip_ensure still asks for a restart when an imported package changed
        packaging.pip_ensure(requirements, skip_packages=["torch"], requester=REQUESTER, prompt_install=False)
    else:
        # Slicer before 5.12: no dependency walk that could hold torch back, so no dependencies at all
        slicer.util.pip_install(["--no-deps", *requirements])


def ensure_dependencies(ask: bool = True, plan: InstallPlan | None = None) -> bool:
    """True when torch and MONAI are importable, installing them after asking if needed.

    Never raises: a failed install is shown (``slicer.util.errorDisplay``) and gives False, so that
    the Apply and Train slots only have to return.
    """
    import slicer

    plan = plan or plan_install()
    if not plan.needed:
        return True
    if testing_enabled():
        log.warning("MedAI: testing mode, not installing missing packages: %s", plan.describe())
        return False
    if ask and not slicer.util.confirmOkCancelDisplay(plan.describe() + "\n\nInstall them now? This can take several minutes.",
                                                      windowTitle="MedAI: install dependencies"):
        log.info("MedAI: dependency installation declined")
        return False
    try:
        # tryWithErrorDisplay shows the error and re-raises it: the except below keeps it out of the slots
        with slicer.util.tryWithErrorDisplay("MedAI: installing the Python dependencies failed."):
            if plan.torch:
                _install_torch()
            if plan.others:
                _install_others(plan.others)
    except Exception:
        log.exception("MedAI: installing the Python dependencies failed")
        return False
    left = plan_install()
    if left.torch:
        slicer.util.errorDisplay("PyTorch was not installed; install the PyTorch extension from the Extension Manager and retry.")
    elif left.needed:
        slicer.util.errorDisplay(left.describe() + "\n\nInstall them from the Python console with slicer.util.pip_install, then retry.")
    return not left.needed
