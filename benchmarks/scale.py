"""Does the generation job scale in n? The real job at the cheapest settings, at growing n, one process each.

    python benchmarks/scale.py [--n 500 5000] [--workers 2] [--out-dir DIR] [--keep]

Prints JSON. Each n runs `factory.sample.job.generate` (the code path of jobs/generate.py: Ray Data, sampler
actors, datasink, finalize) in a fresh child process on the shipped demo bundle with 1 denoising step per
stage, guidance 1 (no null branch), one gate attempt and 2 frames, so the models cost little and what is
measured is the job's own overhead. Per n: the driver's peak RSS (the child's ru_maxrss, which includes
the Ray client) and its growth during the run; the start-up (Ray Data planning, actors loading the bundle:
from the call to the first committed subject); the steady per-subject time (between the first and the last
subject's commit record, by their modification times); the finalize time (table + manifest); files per
subject. The summary gives the largest n's ratio to the smallest for RSS and the per-subject time (goal:
RSS within 10 %, per-subject time flat).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHEAPEST = {"steps": 1, "guidance": 1.0, "motion_guidance": 1.0, "max_gate_attempts": 1}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(n: int, workers: int, out: str) -> dict:
    """Generate n cheap subjects into `out` in this process; the measures of the run."""
    from factory.cluster import connect
    from factory.presets import get_preset
    from factory.sample.job import DEMO_BUNDLE, RunSpec, generate
    from factory.sample.pipeline import SamplerSettings
    from factory.sample.plan import make_plan
    from factory.store.layout import ROWS_DIR

    start = time.perf_counter()
    connect()
    ray_start = time.perf_counter() - start
    plan = make_plan(n, get_preset("tiny"), seed=0, balance="diagnosis", frames=2)
    baseline = peak_rss_mb()
    spec = RunSpec(bundle=str(DEMO_BUNDLE), out=out, settings=SamplerSettings(**CHEAPEST), workers=workers)
    called = time.time()
    summary = generate(spec, plan)
    files = sum(1 for path in Path(out).rglob("*") if path.is_file())
    commits = sorted(path.stat().st_mtime for path in (Path(out) / ROWS_DIR).glob("*.json"))
    return {"n": n, "ray_start_s": round(ray_start, 1), "seconds": summary["seconds"],
            "startup_s": round(commits[0] - called, 1), "finalize_s": summary["finalize_s"],
            "per_subject_ms": round(1000 * (commits[-1] - commits[0]) / (n - 1), 2),
            "driver_peak_rss_mb": round(peak_rss_mb(), 1),
            "driver_rss_growth_mb": round(peak_rss_mb() - baseline, 1),
            "files_per_subject": round(files / n, 2), "gate_failures": summary["gate_failures"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 5000], help="plan sizes, smallest first")
    parser.add_argument("--workers", type=int, default=2, help="sampler actors")
    parser.add_argument("--out-dir", help="where the stores go (default: a temporary folder, removed)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: run one n in this process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.workers, str(Path(args.out_dir) / f"scale_{args.child}.zarr"))))
        return
    with tempfile.TemporaryDirectory(dir=args.out_dir) as folder:
        runs = []
        for n in args.n:
            done = subprocess.run([sys.executable, __file__, "--child", str(n), "--workers", str(args.workers),
                                   "--out-dir", folder], check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs[0], runs[-1]
    print(json.dumps({"settings": CHEAPEST | {"frames": 2, "workers": args.workers}, "runs": runs,
                      "rss_ratio": round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3),
                      "per_subject_ratio": round(large["per_subject_ms"] / small["per_subject_ms"], 3)}, indent=1))


if __name__ == "__main__":
    main()
