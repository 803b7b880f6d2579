"""Progress: a tqdm bar on a terminal (loss, α, it/s, ETA), plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int, *, enabled: bool = True, stream: TextIO | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.total, self.start, self.enabled, self.say = total, start, enabled, say
        stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, file=stream, dynamic_ncols=True, unit="it")

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def tick(self, step: int, fields: dict[str, float]) -> None:
        """Called at log ticks: refresh the bar's fields, or print one plain line."""
        if not self.enabled:
            return
        fields = {k: v for k, v in fields.items() if v == v}  # an objective without an α logs NaN: not shown
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
            return
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = _eta((self.total - step) / rate) if rate > 0 else "?"
        parts = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
        self.say(f"step {step}/{self.total}  {parts}  {rate:.2f} it/s  ETA {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
