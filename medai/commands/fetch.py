"""``medai fetch NAME [NAME ...]``: download catalog models ahead of time (through the mirror, if set)."""

from __future__ import annotations

import sys

from ..models import catalog
from .progressbar import ProgressBar


def register(sub) -> None:
    p = sub.add_parser("fetch", help="download catalog models into the cache ahead of time")
    p.add_argument("names", nargs="+", metavar="NAME", help="catalog model names (see `medai models --all`)")
    p.set_defaults(handler=run)


def run(args) -> int:
    entries = []
    for name in args.names:
        entry = catalog.find_model(name)
        if entry is None:
            raise KeyError(f"model {name!r} is not in the catalog; `medai models --all` lists the names")
        entries.append(entry)
    for entry in entries:
        note = catalog.update_note(entry)
        with ProgressBar(f"fetch {entry.name}") as bar:
            path = catalog.fetch_model(entry, lambda f: bar(f, "download"))
        print(f"{entry.name}\t{entry.version or '-'}\t{path}")
        if note:
            print(f"updated: {note.split(';')[0]}", file=sys.stderr)
    return 0
