"""A terminal progress bar for engine callbacks (quiet when output is not a terminal)."""

from __future__ import annotations

import sys


class ProgressBar:
    """Callable ``(fraction, stage)`` that drives a tqdm bar on stderr."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=description, unit="", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                        disable=not sys.stderr.isatty(), file=sys.stderr)

    def __call__(self, fraction: float, stage: str) -> None:
        self.bar.n = int(fraction * 1000)
        self.bar.set_postfix_str(stage, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
