"""What ``trainer.num_threads`` does on a machine whose cores are busy: the reason for its default.

Times one training step of a zoo model (forward, backward, SGD step; channels_last as the suite runs it) at
each thread count, first as the machine is, then with ``--busy`` extra processes spinning on the CPU (as
another user's job would), and optionally a whole command (``--command``, e.g. the quickstart) the same way.
Prints one line per measurement and the load average before each; ``--out`` writes them as JSON. On a machine
that others share, ``--nice -10`` (as root) runs the measured work and the spinners ahead of the other users'
processes, so that "idle" means idle but for them.

    python benchmarks/busy_cores.py                                   # resnet20 step, 1 and 2 threads, 0 and 2 busy
    python benchmarks/busy_cores.py --command "python run.py -m experiment=quickstart" --threads 1 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spin() -> None:
    while True:
        pass


def step_ms(model_name: str, batch_size: int, threads: int, steps: int) -> float:
    """Median milliseconds of one training step of ``model_name`` on random 32x32 images with ``threads`` threads."""
    import torch

    from kd_hydra.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=100, in_channels=3, image_size=32).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (batch_size,))
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return 1000 * sorted(times[2:])[len(times[2:]) // 2]


def command_seconds(command: str, threads: int, workdir: Path) -> float:
    """Wall seconds of ``command`` (a run.py command line) with ``trainer.num_threads`` (0: null, all cores)."""
    value = "null" if threads == 0 else str(threads)
    shutil.rmtree(workdir, ignore_errors=True)  # nothing stored by an earlier measurement: the teacher is trained
    env = {**os.environ, "KD_HYDRA_OUTPUT_DIR": str(workdir / "outputs"), "KD_HYDRA_CACHE_DIR": str(workdir / "cache")}
    started = time.perf_counter()
    subprocess.run(
        [*shlex.split(command), f"trainer.num_threads={value}", "trainer.progress=false"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (0: null, all cores)")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="spinning processes of the busy case")
    parser.add_argument("--command", help="also time this run.py command line (its caches in a fresh workdir)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kd-hydra-busy-cores"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--nice", type=int, default=0, help="niceness of the measured work and the spinners")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by the spinners and the command
    results: list[dict[str, Any]] = []
    for busy in (0, args.busy):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            for threads in args.threads:
                load = os.getloadavg()[0]
                row: dict[str, Any] = {"busy": busy, "threads": threads, "load_before": round(load, 2)}
                if args.command:
                    workdir = args.workdir / f"busy{busy}-threads{threads}"
                    row["command_seconds"] = round(command_seconds(args.command, threads, workdir), 1)
                else:
                    count = threads or os.cpu_count() or 1
                    row["step_ms"] = round(step_ms(args.model, args.batch_size, count, args.steps), 1)
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            for process in spinners:
                process.terminate()
    if args.out:
        summary = {"model": args.model, "batch_size": args.batch_size, "results": results}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
