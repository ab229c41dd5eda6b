"""``medai models``: list the model catalog, one model per line, its name first.

``--all`` adds the version, licence (with a flag where use is restricted) and whether the
model is already in the cache; notes about newer catalog versions go to stderr.
"""

from __future__ import annotations

import sys

from ..models import catalog


def register(sub) -> None:
    p = sub.add_parser("models", help="list the catalog's models")
    p.add_argument("--all", action="store_true", help="every model with task, modality, version, licence and cached state")
    p.set_defaults(handler=run)


def licence_text(m: catalog.CatalogEntry) -> str:
    flag = m.license_flag
    return f"[{flag.upper()}] {m.license}" if flag else m.license


def run(args) -> int:
    default = catalog.default_model_name()
    models = catalog.list_models()
    if not getattr(args, "all", False):
        for m in models:
            mark = " (default)" if m.name == default else ""
            print(f"{m.name}\t{m.task}\t{m.modality}\t{m.title}{mark}\t{m.license}")
        return 0
    print("name\ttask\tmodality\tversion\tlicence\tcached")
    for m in models:
        cached = "cached" if catalog.is_cached(m) else "not cached"
        print(f"{m.name}\t{m.task}\t{m.modality}\t{m.version or '-'}\t{licence_text(m)}\t{cached}")
    for m in models:
        note = catalog.update_note(m)
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0
