"""Static checks for what cannot fail loudly inside a real Slicer: CMake lists, .ui names, imports, packaging."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIRS = ("MedAISegment", "MedAIClassify", "MedAILib")
GUI_IMPORTS = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "MedAILib", "PythonQt")


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """``set(NAME a b c)`` blocks of a CMakeLists.txt, with ${MODULE_NAME} expanded."""
    text = re.sub(r"(?m)(^|\s)#[^\n\"]*$", "", path.read_text(encoding="utf-8"))  # comments, not '#' inside quoted URLs
    sets = {m.group(1): m.group(2).split() for m in re.finditer(r"set\((\w+)\s+([^)]*)\)", text)}
    name = (sets.get("MODULE_NAME") or [""])[0]
    return {k: [v.replace("${MODULE_NAME}", name) for v in vals] for k, vals in sets.items()}


def module_dirs() -> list[Path]:
    return [REPO / d for d in MODULE_DIRS if (REPO / d).is_dir()]


def py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_every_core_file_and_catalog_resource_is_in_cmake():
    sets = cmake_sets(REPO / "CMakeLists.txt")
    listed_py, listed_res = set(sets["MEDAI_PYTHON_SCRIPTS"]), set(sets["MEDAI_PYTHON_RESOURCES"])
    on_disk_py = {p.relative_to(REPO).as_posix() for p in py_files(REPO / "medai")}
    on_disk_res = {p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / "Catalog").rglob("*")
                   if p.is_file() and not p.name.startswith(".")}
    # models shipped in the repository: what the loader needs (card, weights) must be installed too
    on_disk_res |= {p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / "Models").glob("*/*")
                    if p.name in ("medai.json", "model.pt")}
    assert not on_disk_py - listed_py, f"add to MEDAI_PYTHON_SCRIPTS in CMakeLists.txt: {sorted(on_disk_py - listed_py)}"
    assert not on_disk_res - listed_res, f"add to MEDAI_PYTHON_RESOURCES in CMakeLists.txt: {sorted(on_disk_res - listed_res)}"
    missing = [f for f in listed_py | listed_res if not (REPO / f).is_file()]
    assert not missing, f"CMakeLists.txt lists files that do not exist: {missing}"


@pytest.mark.parametrize("folder", module_dirs(), ids=lambda p: p.name)
def test_every_module_file_and_resource_is_in_cmake(folder):
    sets = cmake_sets(folder / "CMakeLists.txt")
    listed_py = set(sets.get("MODULE_PYTHON_SCRIPTS", []))
    listed_res = set(sets.get("MODULE_PYTHON_RESOURCES", []))
    on_disk_py = {p.relative_to(folder).as_posix() for p in py_files(folder) if "Testing" not in p.parts}
    on_disk_res = {p.relative_to(folder).as_posix() for p in (folder / "Resources").rglob("*") if p.is_file()} \
        if (folder / "Resources").is_dir() else set()
    assert not on_disk_py - listed_py, f"{folder.name}/CMakeLists.txt: add {sorted(on_disk_py - listed_py)} to MODULE_PYTHON_SCRIPTS"
    assert not on_disk_res - listed_res, f"{folder.name}/CMakeLists.txt: add {sorted(on_disk_res - listed_res)} to MODULE_PYTHON_RESOURCES"
    assert all((folder / f).is_file() for f in listed_py | listed_res)
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"add_subdirectory({folder.name})" in top, f"add add_subdirectory({folder.name}) to CMakeLists.txt"


def test_extension_metadata_and_index_entry():
    sets = cmake_sets(REPO / "CMakeLists.txt")
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert key in sets, f"CMakeLists.txt: set {key}"
    depends = [d.strip('"') for d in sets["EXTENSION_DEPENDS"]]
    assert depends == ["PyTorch"]
    assert re.search(r"project\(MedAI\)", text)
    schema = json.loads((Path(__file__).parent / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text(encoding="utf-8"))
    entry = json.loads((REPO / "Resources" / "ExtensionsIndex" / "MedAI.json").read_text(encoding="utf-8"))
    assert entry["$schema"] == schema["$id"]
    assert set(schema["required"]) <= set(entry) and set(entry) <= set(schema["properties"])
    types = {"string": str, "array": list, "integer": int, "boolean": bool}
    for key, value in entry.items():
        spec = schema["properties"][key]
        assert isinstance(value, types[spec["type"]]), key
        assert "enum" not in spec or value in spec["enum"]
        assert spec.get("minimum", value) <= value <= spec.get("maximum", value) if spec["type"] == "integer" else True
    assert entry["build_dependencies"] == depends
    assert entry["category"] == sets["EXTENSION_CATEGORY"][0].strip('"')


@pytest.mark.parametrize("png", ["Resources/MedAI.png", "MedAISegment/Resources/Icons/MedAISegment.png",
                                 "MedAIClassify/Resources/Icons/MedAIClassify.png"])
def test_icons_are_128_png(png):
    from PIL import Image

    with Image.open(REPO / png) as im:
        assert im.format == "PNG" and im.size == (128, 128)


def _ui_names(ui: Path) -> tuple[set[str], set[str]]:
    import xml.etree.ElementTree as ET

    tree = ET.parse(ui)
    names = {w.get("name") for w in tree.iter("widget")} | {w.get("name") for w in tree.iter("layout")}
    params = {p.findtext("string") for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    return names, params


def _parameter_fields(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    return set()


@pytest.mark.parametrize("name", [d for d in ("MedAISegment", "MedAIClassify") if (REPO / d).is_dir()])
def test_ui_names_and_parameter_names_match_code(name):
    source = REPO / name / f"{name}.py"
    ui = REPO / name / "Resources" / "UI" / f"{name}.ui"
    code = source.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    names, params = _ui_names(ui)
    assert used, "the module uses no .ui widget"
    assert not used - names, f"{ui.name} lacks widgets used as self.ui.<name>: {sorted(used - names)}"
    fields = _parameter_fields(source)
    assert fields, f"{source.name}: no @parameterNodeWrapper class"
    assert not params - fields, f"SlicerParameterName in {ui.name} not a parameter node field: {sorted(params - fields)}"
    assert f'self.resourcePath("UI/{name}.ui")' in code
    assert f"class {name}Test(ScriptedLoadableModuleTest)" in code
    assert f"slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py)" in (REPO / name / "CMakeLists.txt").read_text(encoding="utf-8")


def test_shared_widget_ui_names_are_in_every_module_ui():
    """MedAILib/moduleWidget.py drives both panels: each self.ui.<name> it uses must be in both .ui files."""
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / "MedAILib" / "moduleWidget.py").read_text(encoding="utf-8")))
    assert used, "moduleWidget.py uses no .ui widget"
    for name in ("MedAISegment", "MedAIClassify"):
        names, _ = _ui_names(REPO / name / "Resources" / "UI" / f"{name}.ui")
        assert not used - names, f"{name}.ui lacks widgets used by MedAILib/moduleWidget.py: {sorted(used - names)}"


def test_gui_imports_only_in_module_folders():
    offenders = []
    for path in py_files(REPO):
        rel = path.relative_to(REPO)
        if rel.parts[0] in MODULE_DIRS or rel.parts[0] in (".venv", "Testing", "build"):
            continue
        bad = {i for i in imports_of(path) if any(i == g or i.startswith(g + ".") for g in GUI_IMPORTS)}
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, "qt/ctk/ScriptedLoadableModule imports belong in the module folders only:\n" + "\n".join(offenders)


def test_bridge_imports_only_slicer_vtk_and_core():
    allowed = {"slicer", "vtk", "medai", "numpy", "torch"} | set(sys.stdlib_module_names)
    offenders = []
    for path in py_files(REPO / "medai" / "slicer"):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top not in allowed or (top == "slicer" and name.split(".")[1:2] not in ([], ["util"], ["vtkMRMLScalarVolumeNode"])):
                offenders.append(f"{path.name}: {name}")
    assert not offenders, "medai/slicer may import only slicer (MRML API), vtk and the medai core:\n" + "\n".join(offenders)


def test_rules_would_catch_a_qt_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import qt\nfrom slicer.ScriptedLoadableModule import ScriptedLoadableModule\n")
    assert {"qt", "slicer.ScriptedLoadableModule"} <= imports_of(bad)


def test_train_section_ui_names_match_code():
    """MedAILib/trainSection.py drives the shared Train section: each self.ui.<name> is in its .ui, which CMake installs."""
    code = (REPO / "MedAILib" / "trainSection.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    names, params = _ui_names(REPO / "MedAILib" / "Resources" / "UI" / "MedAITrainSection.ui")
    assert used and not used - names, f"MedAITrainSection.ui lacks: {sorted(used - names)}"
    assert not params, "the Train section has no parameter node: no SlicerParameterName in its .ui"
    assert '"Resources", "UI", "MedAITrainSection.ui"' in code
    assert "RESOURCES ${MODULE_PYTHON_RESOURCES}" in (REPO / "MedAILib" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "TrainSection(self, self.MODEL_TASK)" in (REPO / "MedAILib" / "moduleWidget.py").read_text(encoding="utf-8")


def _error_display_uses(tree: ast.AST):
    """(function, with-node, enclosing try-nodes) for every ``with slicer.util.tryWithErrorDisplay(...)``."""
    def walk(node, function, tries):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, child, [])
                continue
            inner = tries + [child] if isinstance(child, ast.Try) else tries
            if isinstance(child, ast.With) and any(
                    isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func).endswith("tryWithErrorDisplay")
                    for item in child.items):
                yield function, child, [t for t in tries if any(child is n for s in t.body for n in ast.walk(s))]
            yield from walk(child, function, inner)

    yield from walk(tree, None, [])


def _catches_exception(handler: ast.ExceptHandler) -> bool:
    names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
    return handler.type is None or any(getattr(n, "id", None) in ("Exception", "BaseException") for n in names)


def test_every_try_with_error_display_ends_the_error_itself():
    """Slicer's tryWithErrorDisplay shows the error, then re-raises it (util.py: ``errorDisplay(...); raise``).

    So every use sits in a ``try`` that catches Exception in the same function (else the error escapes
    into setup(), enter() or a button slot), and no statement follows a ``with`` block that ends in a
    return as if the error had been swallowed (it could never run).
    """
    offenders, count = [], 0
    for folder in module_dirs():
        for path in py_files(folder):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for function, node, tries in _error_display_uses(tree):
                count += 1
                where = f"{path.relative_to(REPO)}:{node.lineno} ({function.name if function else 'module'})"
                if not any(_catches_exception(h) for t in tries for h in t.handlers):
                    offenders.append(f"{where}: not inside a try/except Exception")
                block = next(b for p in ast.walk(tree) for f in ("body", "orelse", "finalbody")
                             for b in [getattr(p, f, None)] if isinstance(b, list) and node in b)
                after = block[block.index(node) + 1:]
                if isinstance(node.body[-1], ast.Return) and after:
                    offenders.append(f"{where}: statements after a with-block that returns can never run "
                                     f"(line {after[0].lineno})")
    assert count, "no tryWithErrorDisplay use found: the check looks at nothing"
    assert not offenders, "tryWithErrorDisplay re-raises:\n" + "\n".join(offenders)


def test_error_display_rule_catches_the_old_patterns(tmp_path):
    bare = ast.parse("def f():\n    with slicer.util.tryWithErrorDisplay('x'):\n        return g()\n    return None\n")
    ok = ast.parse("def f():\n    try:\n        with slicer.util.tryWithErrorDisplay('x'):\n            g()\n"
                   "    except Exception:\n        return None\n")
    (function, node, tries), = _error_display_uses(bare)
    assert function.name == "f" and tries == [] and isinstance(node.body[-1], ast.Return)
    (_, _, tries), = _error_display_uses(ok)
    assert len(tries) == 1 and _catches_exception(tries[0].handlers[0])
