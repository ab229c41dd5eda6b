"""Render the Extensions Index screenshot (EXTENSION_SCREENSHOTURLS) from a real MedAISegment run.

The same path as the module's Apply, headless: the MNI152 T1 sample is loaded into a slicer-core scene,
:class:`medai.slicer.segment_logic.SegmentLogic` runs the model (default: the shipped small
``mni-tissue-unet``, grey and white matter) and writes a segmentation node, and Slicer's segmentation
converters build its closed surfaces. The image: the surfaces rendered with VTK offscreen, beside
axial, coronal and sagittal slices of the T1 with the labelmap over it.

    .venv/bin/python scripts/render_screenshot.py [--model deepbet-brain] [--out Resources/Screenshots/MedAISegment.png]

VTK offscreen needs an EGL or OSMesa library (VTK picks one when there is no X display); on a bare
Debian/Ubuntu machine: ``bash scripts/install_offscreen_gl.sh``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = str(REPO / "Resources" / "Models" / "mni-tissue-unet")
DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "MedAISegment.png"
MAX_BYTES = 500_000


def segment(model: str, sample: str, device: str):
    """(T1 node, segmentation node, result, seconds) of a real run through the Slicer bridge."""
    from medai.slicer.headless import make_headless_slicer
    from medai.slicer.panel import load_sample_volume
    from medai.slicer.segment_logic import SegmentLogic

    scene = make_headless_slicer()
    volume = load_sample_volume(sample, scene)
    logic = SegmentLogic()
    start = time.perf_counter()
    seg = logic.segment([volume], model, device=device)
    return volume, seg, logic.last_result, time.perf_counter() - start


def render_surfaces(seg, size: int = 600) -> np.ndarray:
    """The segments' closed surfaces (Slicer's converters), rendered offscreen; an RGB array."""
    import vtk
    from vtk.util import numpy_support

    if not seg.CreateClosedSurfaceRepresentation():
        raise RuntimeError(f"{seg.GetName()}: no closed surface could be made from the segmentation")
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.09, 0.12)
    segmentation = seg.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    # outermost (largest) surface translucent, so the inner ones show through
    surfaces = []
    for segment_id in ids:
        polydata = vtk.vtkPolyData()
        seg.GetClosedSurfaceRepresentation(segment_id, polydata)
        surfaces.append((polydata.GetNumberOfPoints(), segment_id, polydata))
    surfaces.sort(key=lambda s: s[0], reverse=True)
    for n, (_, segment_id, polydata) in enumerate(surfaces):
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(polydata)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segmentation.GetSegment(segment_id).GetColor())
        actor.GetProperty().SetOpacity(0.35 if n == 0 and len(surfaces) > 1 else 1.0)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)  # superior up
    camera.SetPosition(-1.0, 1.2, 0.5)  # from the left, anterior and above
    camera.SetFocalPoint(0, 0, 0)
    renderer.ResetCamera()
    camera.Zoom(1.75)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    if rgb.std() < 1.0:
        raise RuntimeError("the offscreen render is blank: VTK found no working EGL/OSMesa library "
                           "(run scripts/install_offscreen_gl.sh)")
    return rgb


def ras_ordered(array: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """``array`` ([k, j, i]) reordered to [S, A, R] with each axis increasing (the grid is axis-aligned)."""
    directions = ijk_to_ras[:3, :3]
    out = array
    order = []
    for ras_axis in (2, 1, 0):  # S, A, R
        ijk_axis = int(np.argmax(np.abs(directions[ras_axis])))
        order.append(2 - ijk_axis)  # array axes are [k, j, i]
    out = np.transpose(out, order)
    for n, ras_axis in enumerate((2, 1, 0)):
        ijk_axis = int(np.argmax(np.abs(directions[ras_axis])))
        if directions[ras_axis, ijk_axis] < 0:
            out = np.flip(out, axis=n)
    return out


def compose(t1: np.ndarray, labels: np.ndarray, colors: dict[int, tuple], surfaces: np.ndarray, title: str) -> bytes:
    """One row: the 3D surfaces, then axial, coronal and sagittal slices with the labels over the T1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, a = t1.shape[0] // 2, t1.shape[1] // 2
    r = int(t1.shape[2] * 0.4)  # sagittal through the left hemisphere, not the midline
    slices = [("axial", t1[s], labels[s]), ("coronal", t1[:, a], labels[:, a]), ("sagittal", t1[:, :, r], labels[:, :, r])]
    lo, hi = np.percentile(t1, [1, 99.5])
    fig, axes = plt.subplots(1, 4, figsize=(12.8, 3.6), dpi=100, facecolor="#14171f")
    axes[0].imshow(surfaces)
    axes[0].set_title("3D surfaces", color="w", fontsize=10)
    for ax, (name, image, label) in zip(axes[1:], slices):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        overlay = np.zeros(label.shape + (4,))
        for value, color in colors.items():
            overlay[label == value] = (*color, 0.45)
        ax.imshow(overlay, origin="lower")
        ax.set_title(name, color="w", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, color="w", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    return buffer.getvalue()


def small_png(png: bytes, limit: int = MAX_BYTES) -> bytes:
    """The PNG, palette-quantised when it is over ``limit`` bytes."""
    if len(png) <= limit:
        return png
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(colors=256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="catalog name or model folder (default: mni-tissue-unet)")
    parser.add_argument("--sample", default="mni152-t1", help="catalog sample to segment")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import slicer

    volume, seg, result, seconds = segment(args.model, args.sample, args.device)
    surfaces = render_surfaces(seg)
    geometry = result.reference.ijk_to_ras
    t1 = ras_ordered(slicer.util.arrayFromVolume(volume).astype(np.float32), geometry)
    labels = ras_ordered(result.layers[0], geometry)
    colors = {label.value: tuple(label.color) for label in result.labels if label.layer == 0}
    names = ", ".join(label.name for label in result.labels)
    title = f"MedAI Segment: {result.model_name} on the {args.sample} sample ({names})"
    png = small_png(compose(t1, labels, colors, surfaces, title))
    if len(png) > MAX_BYTES:
        raise RuntimeError(f"{args.out}: {len(png)} bytes, over the {MAX_BYTES} byte limit")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.out}: {len(png) // 1024} KiB; {title}; the model ran {seconds:.0f} s on {result.device}")
    return args.out


if __name__ == "__main__":
    main()
