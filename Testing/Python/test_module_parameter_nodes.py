"""Every ``@parameterNodeWrapper`` class of both modules, run by Slicer's own wrapper (v5.12.3) over real MRML.

A fresh parameter node is what a new scene gives the panel's ``setup()``: the wrapper writes every
field's default into it, so a node-typed field without ``None`` in its type (``Union[A, B]``) raises
``TypeError: Unable to write value 'None'`` and the panel cannot open. Each field then round-trips
a value of its type and, where the type allows it, ``None``; the values persist in the MRML node
(a second wrapper over the same node reads them back).
"""

# no "from __future__ import annotations": the wrapper class below needs its annotations evaluated

import importlib
import typing

import pytest

from slicer_python import slicer_python

MODULES = ("MedAISegment", "MedAIClassify")
SAMPLES = {bool: [False, True], str: ["occlusion", ""], int: [3, 0], float: [0.25, 0.0]}


def wrapper_classes(slicer, module) -> list[type]:
    return [v for v in vars(module).values()
            if isinstance(v, type) and slicer.parameterNodeWrapper.isParameterNodeWrapper(v)]


def node_classes(annotation) -> list[type]:
    """The MRML node classes a field's type admits (a class, or a Union of classes and None)."""
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and a.__name__.startswith("vtkMRML")]


def values_for(slicer, annotation) -> list:
    nodes = node_classes(annotation)
    if nodes:
        return [slicer.mrmlScene.AddNewNodeByClass(cls.__name__) for cls in nodes]
    return SAMPLES[annotation]


@pytest.mark.parametrize("moduleName", MODULES)
def test_every_parameter_node_field_on_a_fresh_node(moduleName):
    with slicer_python() as slicer:
        module = importlib.import_module(moduleName)
        classes = wrapper_classes(slicer, module)
        assert classes, f"{moduleName}.py has no @parameterNodeWrapper class"
        logic = getattr(module, f"{moduleName}Logic")()
        for cls in classes:
            params = logic.getParameterNode()  # a fresh vtkMRMLScriptedModuleNode in a fresh scene
            assert isinstance(params, cls)
            hints = typing.get_type_hints(cls)
            for name, annotation in hints.items():
                for value in values_for(slicer, annotation):
                    setattr(params, name, value)
                    again = cls(params.parameterNode)
                    assert getattr(again, name) == value if not hasattr(value, "GetID") else getattr(again, name) is value, name
                if node_classes(annotation):  # every node field is optional in both panels: None clears it
                    setattr(params, name, None)
                    assert getattr(cls(params.parameterNode), name) is None, name


def test_classify_region_accepts_both_node_types_and_none():
    """The region field: a segmentation, an ROI or nothing, on a fresh node (the crash of a Union without None)."""
    with slicer_python() as slicer:
        MedAIClassify = importlib.import_module("MedAIClassify")
        params = MedAIClassify.MedAIClassifyLogic().getParameterNode()
        assert params.region is None
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        params.region = seg
        assert MedAIClassify.MedAIClassifyLogic().getParameterNode().region is seg
        params.region = roi
        assert MedAIClassify.MedAIClassifyLogic().getParameterNode().region is roi
        params.region = None
        assert MedAIClassify.MedAIClassifyLogic().getParameterNode().region is None


def test_union_without_none_is_what_slicer_rejects():
    """The rule the fix follows, shown with Slicer's own wrapper: no ``None`` in a node Union, no new parameter node."""
    with slicer_python() as slicer:
        from slicer.parameterNodeWrapper import parameterNodeWrapper

        @parameterNodeWrapper
        class Broken:
            region: typing.Union[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLMarkupsROINode]

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        with pytest.raises(TypeError, match="Unable to write value 'None'"):
            Broken(node)


def ui_parameter_widgets(ui_path) -> list[tuple[str, str, list[str] | None, bool | None]]:
    """(widget class, SlicerParameterName, nodeTypes, noneEnabled) of every .ui widget bound to a field."""
    import xml.etree.ElementTree as ET

    out = []
    for w in ET.parse(ui_path).iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if "SlicerParameterName" in props:
            types_ = props.get("nodeTypes")
            none = props.get("noneEnabled")
            out.append((w.get("class"), props["SlicerParameterName"].findtext("string"),
                        [s.text for s in types_.iter("string")] if types_ is not None else None,
                        None if none is None else none.findtext("bool") == "true"))
    return out


@pytest.mark.parametrize("moduleName", MODULES)
def test_ui_parameter_names_match_the_fields_as_slicer_connects_them(moduleName):
    """Each .ui SlicerParameterName is a field of the module's wrapper of the kind its widget represents,
    checked with the functions Slicer's own GUI connectors use (isNodeOrUnionOfNodes, getNodeTypes)."""
    from pathlib import Path

    ui = Path(__file__).resolve().parents[2] / moduleName / "Resources" / "UI" / f"{moduleName}.ui"
    with slicer_python() as slicer:
        pnw = slicer.parameterNodeWrapper
        module = importlib.import_module(moduleName)
        cls, = wrapper_classes(slicer, module)
        hints = typing.get_type_hints(cls)
        bound = ui_parameter_widgets(ui)
        assert bound, f"{ui.name} binds no widget to the parameter node"
        for widgetClass, name, nodeTypes, noneEnabled in bound:
            assert name in hints, f"{ui.name}: SlicerParameterName {name!r} is not a field of {cls.__name__}"
            datatype = hints[name]
            if widgetClass == "qMRMLNodeComboBox":
                assert pnw.isNodeOrUnionOfNodes(datatype), f"{name}: {datatype} cannot drive a node combo box"
                assert sorted(pnw.getNodeTypes(datatype)) == sorted(nodeTypes), f"{ui.name}: nodeTypes of {name}"
                if noneEnabled:
                    assert node_classes(datatype) and (len(node_classes(datatype)) == 1 or type(None) in typing.get_args(datatype)), \
                        f"{name}: the selector allows None but the Union does not"
            elif widgetClass in ("QCheckBox", "ctkCheckBox"):
                assert pnw.unannotatedType(datatype) is bool, name
            else:
                assert pnw.unannotatedType(datatype) in (str, int, float), f"{name}: {widgetClass} bound to {datatype}"
