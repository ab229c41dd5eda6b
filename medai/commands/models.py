"""``medai models``: list the model catalog, one model per line, its name first."""

from __future__ import annotations

from ..models import catalog


def register(sub) -> None:
    p = sub.add_parser("models", help="list the catalog's models")
    p.set_defaults(handler=run)


def run(args) -> int:
    default = catalog.default_model_name()
    for m in catalog.list_models():
        mark = " (default)" if m.name == default else ""
        print(f"{m.name}\t{m.task}\t{m.modality}\t{m.title}{mark}\t{m.license}")
    return 0
