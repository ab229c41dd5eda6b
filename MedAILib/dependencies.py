"""First-run check for PyTorch and MONAI, and their installation after asking the user.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` when it is there (it picks the CUDA
build that matches the driver), else from pip. The rest comes from ``slicer.packaging.pip_ensure``
(Slicer 5.12 and later: progress dialog, restart prompt, nothing installed in testing mode) with
torch held back, or on older Slicer from ``slicer.util.pip_install`` with ``--no-deps``. A working
torch is never replaced, and in testing mode (the self-tests) nothing is installed at all. Optional package
sets (``OPTIONAL_SETS``: ``nnunet`` for nnU-Net v2 models) are exact pins installed with ``--no-deps``.
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
# Optional package sets, asked for only by the models that need them (plan_install(optional=...)). They are
# installed with --no-deps from exact pins, so that they never replace torch or SimpleITK.
OPTIONAL_SETS = {"nnunet": "nnunetv2"}  # set name -> the module whose presence means the set is installed


def optional_requirements(name: str) -> list[str]:
    """The exact pins of an optional set (``nnunet``: nnunetv2 and what its prediction imports)."""
    if name == "nnunet":
        from medai.models.formats.nnunet import NNUNET_REQUIREMENTS  # torch-free

        return list(NNUNET_REQUIREMENTS)
    raise KeyError(f"no optional package set {name!r}; known: {', '.join(OPTIONAL_SETS)}")


@dataclass
class InstallPlan:
    """What is missing; ``torch`` is True only when torch cannot be imported at all."""

    torch: bool = False
    others: list[str] = field(default_factory=list)
    no_deps: list[str] = field(default_factory=list)  # optional sets: installed with --no-deps

    @property
    def needed(self) -> bool:
        return self.torch or bool(self.others) or bool(self.no_deps)

    def describe(self) -> str:
        items = ([TORCH_REQUIREMENT + " (through the PyTorch extension when installed)"] if self.torch else []) + self.others + self.no_deps
        return "MedAI needs these Python packages, which are not installed yet:\n  " + "\n  ".join(items)


def optional_sets_for(spec: str | None) -> tuple[str, ...]:
    """The optional package sets the model at ``spec`` needs (``("nnunet",)`` for nnU-Net v2 folders and zips); torch-free."""
    from pathlib import Path

    if not spec or not Path(spec).expanduser().exists():
        return ()
    from medai.models.formats.nnunet import FORMAT  # recognition reads file names only

    return ("nnunet",) if FORMAT.recognise(Path(spec).expanduser()) else ()


def plan_install(find_spec: Callable[[str], object] = importlib.util.find_spec, optional: tuple[str, ...] = ()) -> InstallPlan:
    """Which of torch, monai, the other requirements and the ``optional`` sets are missing (nothing is imported)."""
    importlib.invalidate_caches()  # packages installed in this session are found
    return InstallPlan(
        torch=find_spec("torch") is None,
        others=[req for module, req in OTHER_REQUIREMENTS.items() if find_spec(module) is None],
        no_deps=[req for name in optional if find_spec(OPTIONAL_SETS[name]) is None for req in optional_requirements(name)],
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


def ensure_dependencies(ask: bool = True, plan: InstallPlan | None = None, optional: tuple[str, ...] = ()) -> bool:
    """True when torch and MONAI (and the ``optional`` sets, e.g. ``("nnunet",)``) are importable, installing them after asking if needed.

    Never raises: a failed install is shown (``slicer.util.errorDisplay``) and gives False, so that
    the Apply and Train slots only have to return.
    """
    import slicer

    plan = plan or plan_install(optional=optional)
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
            if plan.no_deps:
                slicer.util.pip_install(["--no-deps", *plan.no_deps])  # exact pins, nothing pulled in beside them
    except Exception:
        log.exception("MedAI: installing the Python dependencies failed")
        return False
    left = plan_install(optional=optional)
    if left.torch:
        slicer.util.errorDisplay("PyTorch was not installed; install the PyTorch extension from the Extension Manager and retry.")
    elif left.needed:
        slicer.util.errorDisplay(left.describe() + "\n\nInstall them from the Python console with slicer.util.pip_install, then retry.")
    return not left.needed


def run_self_tests(testCase, moduleName: str, always: list, withModel: list) -> None:
    """A module self-test's ``runTest``: each test between its own ``setUp`` and ``tearDown``; the ``withModel``
    tests only where PyTorch and MONAI are installed (in testing mode nothing is installed)."""
    tests = list(always)
    if plan_install().needed:
        testCase.delayDisplay(f"{moduleName}: PyTorch or MONAI is not installed; the model tests are skipped")
    else:
        tests += withModel
    for test in tests:
        testCase.setUp()
        try:
            test()
        finally:
            testCase.tearDown()
