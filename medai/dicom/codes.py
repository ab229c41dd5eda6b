"""Codes for DICOM objects: Slicer terminology strings to SNOMED concepts, algorithm identification."""

from __future__ import annotations

from dataclasses import dataclass

# Slicer's default for a segment with no terminology: category Tissue, type Tissue (SNOMED CT)
DEFAULT_CATEGORY = ("85756007", "SCT", "Tissue")
DEFAULT_TYPE = ("85756007", "SCT", "Tissue")
LOCAL_SCHEME = "99MEDAI"  # private coding scheme for class names that have no standard code


@dataclass
class SegmentCodes:
    """Category, type (+ modifier) and anatomic region of a segment, each ``(value, scheme, meaning)``."""

    category: tuple[str, str, str] = DEFAULT_CATEGORY
    type: tuple[str, str, str] = DEFAULT_TYPE
    type_modifier: tuple[str, str, str] | None = None
    region: tuple[str, str, str] | None = None


def _code(field: str) -> tuple[str, str, str] | None:
    parts = field.split("^")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    scheme, value, meaning = parts
    return (value, scheme, meaning or value)


def parse_terminology(entry: str | None) -> SegmentCodes:
    """Codes from a Slicer terminology entry string.

    Slicer writes ``context~category~type~typeModifier~anatomicContext~region~regionModifier|``
    (each code ``scheme^value^meaning``); context names are optional here. Missing or
    unreadable codes fall back to SNOMED "Tissue".
    """
    if not entry:
        return SegmentCodes()
    fields = [f for f in entry.strip().rstrip("|").split("~") if "^" in f]  # drop context names
    codes = [_code(f) for f in fields] + [None] * 5
    category, type_, modifier, region = codes[0], codes[1], codes[2], codes[3]
    if category is None or type_ is None:
        return SegmentCodes()
    return SegmentCodes(category, type_, modifier, region)


def terminology_string(codes: SegmentCodes) -> str:
    """The Slicer terminology entry string for ``codes`` (inverse of :func:`parse_terminology`)."""

    def fmt(code):
        return "^^" if code is None else f"{code[1]}^{code[0]}^{code[2]}"

    return (f"Segmentation category and type - DICOM master list~{fmt(codes.category)}~{fmt(codes.type)}~{fmt(codes.type_modifier)}"
            f"~Anatomic codes - DICOM master list~{fmt(codes.region)}~^^|")


@dataclass
class Algorithm:
    """Which model made a result: name, version and the sha256 of its weights."""

    name: str
    version: str = ""
    sha256: str = ""

    @property
    def version_text(self) -> str:
        return self.version or (f"sha256:{self.sha256[:16]}" if self.sha256 else "unversioned")


def algorithm_of(model) -> Algorithm:
    """The :class:`Algorithm` of a loaded model (card version, sha256 of every network's weights)."""
    card = model.card
    version = card.version
    hashes = [s.sha256 for s in getattr(card, "stages", []) if getattr(s, "sha256", None)]
    return Algorithm(card.name, version, ",".join(hashes))


def coded(code: tuple[str, str, str]):
    """A highdicom ``CodedConcept`` from ``(value, scheme, meaning)``."""
    from highdicom.sr import CodedConcept

    value, scheme, meaning = code
    return CodedConcept(value, scheme, meaning[:64])


def local_code(index: int, meaning: str):
    """A code of MedAI's private scheme (class names of a model)."""
    return coded((f"C{index}", LOCAL_SCHEME, meaning))
