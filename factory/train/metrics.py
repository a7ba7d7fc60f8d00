"""Training metrics: an append-only JSONL and CSV log per stage plus a one-line progress print."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path


class MetricsLog:
    """Rank 0's log of one stage: `<stage>.jsonl` (every record) and `<stage>.<kind>.csv` per record kind."""

    def __init__(self, directory: Path | str, stage: str, total_steps: int, start_step: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stage, self.total_steps, self.start_step = stage, total_steps, start_step
        self.started = time.monotonic()
        self.drop_after(start_step)

    def paths(self) -> list[Path]:
        return [self.directory / f"{self.stage}.jsonl", *sorted(self.directory.glob(f"{self.stage}.*.csv"))]

    def drop_after(self, step: int) -> None:
        """Forget records of steps after `step` (written by an attempt that died before its next checkpoint)."""
        for path in self.paths():
            if not path.exists():
                continue
            lines = path.read_text().splitlines(keepends=True)
            if path.suffix == ".jsonl":
                kept = [line for line in lines if json.loads(line)["step"] <= step]
            else:
                kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
            path.write_text("".join(kept))

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """Append one record of `kind` (train, val, ...) at `step` to the JSONL and to that kind's CSV."""
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.directory / f"{self.stage}.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, "time": time.time(), **record}) + "\n")
        path = self.directory / f"{self.stage}.{kind}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)

    def progress(self, step: int, metrics: dict[str, float]) -> str:
        """`[vae] step 120/2000 (6%) | loss 0.123 ... | 1.85 step/s | eta 16.9 min`."""
        done = step - self.start_step
        rate = done / max(time.monotonic() - self.started, 1e-9)
        eta = (self.total_steps - step) / rate / 60 if rate > 0 else math.inf
        values = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        return (f"[{self.stage}] step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%) | {values}"
                f" | {rate:.2f} step/s | eta {eta:.1f} min")
