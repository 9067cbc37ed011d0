"""Which CPU defaults are fastest for every model: ``trainer.channels_last`` and ``soft_label_cache.batch_size``.

For every model of the zoo (``kd_hydra.models.list_models()``) plus the torchvision ``resnet50``
teacher, on CPU, with the suite's own ``build_model``:

a. a student training step (forward, cross-entropy, backward, SGD step with momentum and weight
   decay; batch ``--batch-size``, 128) with channels_last off and on, timed step by step,
   off and on interleaved, median of ``--steps`` steps after ``--warmup`` untimed ones;
b. the teacher pass that fills the soft-label cache (eval mode, ``torch.no_grad()``, forward over
   ``--images`` 1024 images) at each of ``--cache-batches`` 64,128,256,1024, channels_last off and
   on interleaved, median of ``--repeats`` passes after one untimed batch of each shape.

channels_last is applied as ``trainer.channels_last=true`` applies it: the model is converted with
``model.to(memory_format=torch.channels_last)`` and the input batches come channels_last too (the
pipeline's fused normalisation writes them in that memory format). Inputs are CIFAR-shaped
(3x32x32, ``--num-classes`` 100); ``resnet50`` (an ImageNet ResNet, meant for Tiny ImageNet) gets 64x64.

The recommendation at the end: channels_last as the CPU default when it is not slower (beyond
``--tolerance``) for any model on either measure and faster for at least one, off when it is faster
for none, per model otherwise; and the cache batch size with the best geometric-mean throughput
relative to each model's best (per model if no single size is within the tolerance of every model's
best). Each model's speed-up of the recommended settings over the current CPU defaults (read from
``kd_hydra.train.runtime`` and ``kd_hydra.stores.teacher_outputs``) is printed too. No timing target: this
script chooses defaults.

    python benchmarks/cpu_defaults.py --out cpu_defaults.json              # all models (long)
    python benchmarks/cpu_defaults.py --models light_cnn,resnet8x4 --quick # smoke test
    python benchmarks/cpu_defaults.py --markdown                           # tables for README.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from _common import load_average, write_results

TORCHVISION_MODELS = {"resnet50": 64}  # name -> input size; the configured torchvision teachers
CIFAR_IMAGE_SIZE = 32
CHANNELS = 3
DEFAULT_CACHE_BATCHES = (64, 128, 256, 1024)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
MS_PER_S = 1000.0


@dataclass(frozen=True)
class Repeats:
    """How much each measurement repeats (``--quick`` shrinks all of it)."""

    warmup_steps: int = 3
    steps: int = 10
    pass_repeats: int = 3


@dataclass
class ModelResult:
    """One model's timings: step seconds per layout, teacher-pass seconds per (layout, batch size)."""

    name: str
    image_size: int
    step_seconds: dict[str, list[float]] = field(default_factory=dict)  # "off"/"on" -> per-step seconds
    pass_seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # layout -> batch -> seconds

    def step_ms(self, layout: str) -> float:
        return statistics.median(self.step_seconds[layout]) * MS_PER_S

    def images_per_second(self, layout: str, batch: int, images: int) -> float:
        return images / statistics.median(self.pass_seconds[layout][str(batch)])


def current_cpu_defaults() -> tuple[bool, int]:
    """What ``trainer.channels_last=null`` and ``soft_label_cache.batch_size=null`` resolve to on the CPU today."""
    from kd_hydra.stores.teacher_outputs import DEFAULT_FILL_BATCH
    from kd_hydra.train.runtime import CHANNELS_LAST_DEVICES

    return "cpu" in CHANNELS_LAST_DEVICES, DEFAULT_FILL_BATCH["cpu"]


def layout_name(channels_last: bool) -> str:
    return "on" if channels_last else "off"


def default_models() -> list[str]:
    from kd_hydra.models import list_models

    return [*list_models(), *TORCHVISION_MODELS]


def build(name: str, num_classes: int, image_size: int, channels_last: bool, seed: int) -> Any:
    """The model as a run builds it (zoo or torchvision), seeded, in the requested memory format."""
    import torch

    from kd_hydra.models import build_model

    torch.manual_seed(seed)
    source = "torchvision" if name in TORCHVISION_MODELS else "zoo"
    model = build_model(name, num_classes, CHANNELS, image_size, source=source)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def measure_steps(
    name: str, image_size: int, num_classes: int, batch_size: int, repeats: Repeats, seed: int
) -> dict[str, list[float]]:
    """Seconds of each timed training step, channels_last off and on (same weights, interleaved)."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, CHANNELS, image_size, image_size, generator=generator)
    targets = torch.randint(0, num_classes, (batch_size,), generator=generator)
    loss_fn = nn.CrossEntropyLoss()
    steps: dict[str, Callable[[], None]] = {}
    for channels_last in (False, True):
        model = build(name, num_classes, image_size, channels_last, seed).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

        batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer, batch=batch) -> None:
            loss = loss_fn(model(batch), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[layout_name(channels_last)] = step
    for _ in range(repeats.warmup_steps):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {layout: [] for layout in steps}
    for _ in range(repeats.steps):
        for layout, step in steps.items():
            seconds[layout].append(timed(step))
    return seconds


def measure_passes(
    name: str, image_size: int, num_classes: int, num_images: int, batches: Sequence[int], repeats: Repeats, seed: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each no-grad teacher pass over ``num_images`` images, per layout and batch size."""
    import torch

    images = torch.randn(num_images, CHANNELS, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    models = {layout_name(cl): build(name, num_classes, image_size, cl, seed).eval() for cl in (False, True)}
    inputs = {
        layout_name(cl): images.contiguous(memory_format=torch.channels_last) if cl else images for cl in (False, True)
    }
    seconds: dict[str, dict[str, list[float]]] = {layout: {} for layout in models}
    with torch.no_grad():
        for batch in batches:
            chunks = {layout: list(torch.split(inputs[layout], batch)) for layout in models}
            for layout, model in models.items():  # untimed: one batch of each shape (kernel selection, allocator)
                for shape in {tuple(chunk.shape) for chunk in chunks[layout]}:
                    model(next(chunk for chunk in chunks[layout] if tuple(chunk.shape) == shape))
            for layout in models:
                seconds[layout][str(batch)] = []
            for _ in range(repeats.pass_repeats):
                for layout, model in models.items():
                    seconds[layout][str(batch)].append(
                        timed(lambda model=model, parts=chunks[layout]: [model(c) for c in parts])
                    )
    return seconds


# -- analysis --------------------------------------------------------------------------------------


def classify(speedup: float, tolerance: float) -> str:
    """``faster`` / ``slower`` / ``same`` for an off/on time ratio (> 1: channels_last is faster)."""
    if speedup >= 1.0 + tolerance:
        return "faster"
    if speedup <= 1.0 - tolerance:
        return "slower"
    return "same"


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def analyse(results: Sequence[ModelResult], batches: Sequence[int], images: int, tolerance: float) -> dict[str, Any]:
    """Per-model speed-ups and verdicts, and the recommended channels_last and cache batch size."""
    per_model: dict[str, dict[str, Any]] = {}
    for result in results:
        step_speedup = result.step_ms("off") / result.step_ms("on")
        best = {
            layout: max(batches, key=lambda b, layout=layout: result.images_per_second(layout, b, images))
            for layout in ("off", "on")
        }
        pass_speedup = result.images_per_second("on", best["on"], images) / result.images_per_second(
            "off", best["off"], images
        )
        verdicts = {"step": classify(step_speedup, tolerance), "teacher_pass": classify(pass_speedup, tolerance)}
        per_model[result.name] = {
            "step_ms_off": result.step_ms("off"),
            "step_ms_on": result.step_ms("on"),
            "step_speedup_channels_last": step_speedup,
            "best_cache_batch": best,
            "pass_speedup_channels_last": pass_speedup,
            "channels_last_verdict": verdicts,
        }

    all_verdicts = [v for row in per_model.values() for v in row["channels_last_verdict"].values()]
    helps = [
        name
        for name, row in per_model.items()
        if "faster" in row["channels_last_verdict"].values() and "slower" not in row["channels_last_verdict"].values()
    ]
    if "faster" in all_verdicts and "slower" not in all_verdicts:
        channels_last: dict[str, Any] = {
            "default": "on",
            "per_model": None,
            "reason": "faster or equal for every model, on both measures",
        }
    elif not helps:
        channels_last = {
            "default": "off",
            "per_model": None,
            "reason": "faster for no model without being slower on the other measure",
        }
    else:
        channels_last = {
            "default": "per model",
            "per_model": {name: name in helps for name in per_model},
            "reason": f"faster for {len(helps)} of {len(per_model)} models, slower for some",
        }

    def chosen_layout(name: str) -> str:
        if channels_last["default"] == "per model":
            return layout_name(channels_last["per_model"][name])
        return channels_last["default"]

    relative: dict[str, dict[str, float]] = {}  # batch -> model -> img/s / that model's best img/s
    for result in results:
        layout = chosen_layout(result.name)
        top = max(result.images_per_second(layout, b, images) for b in batches)
        for batch in batches:
            relative.setdefault(str(batch), {})[result.name] = result.images_per_second(layout, batch, images) / top
    scores = {batch: geometric_mean(list(models.values())) for batch, models in relative.items()}
    best_batch = max(scores, key=lambda b: scores[b])
    near_best_for_all = all(value >= 1.0 - tolerance for value in relative[best_batch].values())
    cache_batch = {
        "default": int(best_batch),
        "geomean_relative_throughput": scores,
        "within_tolerance_for_every_model": near_best_for_all,
        "per_model": {r.name: per_model[r.name]["best_cache_batch"][chosen_layout(r.name)] for r in results},
    }

    current_layout, current_batch = current_cpu_defaults()
    for result in results:  # the recommendation against today's defaults, per model
        layout = chosen_layout(result.name)
        row = per_model[result.name]
        row["recommended_layout"] = layout
        row["step_speedup_vs_current"] = result.step_ms(layout_name(current_layout)) / result.step_ms(layout)
        current = (
            result.images_per_second(layout_name(current_layout), current_batch, images)
            if str(current_batch) in result.pass_seconds["off"]
            else float("nan")
        )
        row["pass_speedup_vs_current"] = result.images_per_second(layout, int(best_batch), images) / current
    current = {"channels_last": layout_name(current_layout), "cache_batch_size": current_batch}
    return {"per_model": per_model, "channels_last": channels_last, "cache_batch_size": cache_batch, "current": current}


# -- report ----------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> list[str]:
    """Rows as a markdown table or as right-aligned plain columns (first column left-aligned)."""
    if markdown:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), *(line(row) for row in rows)]


def ratio_text(value: float) -> str:
    """``1.23x``, or ``n/a`` when a side was not measured (e.g. the current cache batch not in --cache-batches)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def format_report(report: Mapping[str, Any], results: Sequence[ModelResult], markdown: bool) -> str:
    conf = report["config"]
    batches, images = conf["cache_batches"], conf["images"]
    analysis = report["analysis"]
    lines = [
        (
            f"CPU defaults: {conf['threads']} threads, {conf['cpu_count']} cores, torch {conf['torch']}, "
            f"load average before / after {conf['load_before']} / {report.get('load_after')}"
        ),
        "",
    ]
    lines.append(
        f"a. student training step, batch {conf['batch_size']}, median of {conf['repeats']['steps']} "
        "steps (ms); ratio = off / on (> 1: channels_last faster)"
    )
    rows = []
    for r in results:
        row = analysis["per_model"][r.name]
        rows.append(
            [
                r.name,
                f"{r.image_size}",
                f"{row['step_ms_off']:.1f}",
                f"{row['step_ms_on']:.1f}",
                f"{row['step_speedup_channels_last']:.2f}x",
                row["channels_last_verdict"]["step"],
            ]
        )
    lines += table(["model", "input", "step ms off", "step ms on", "ratio", "channels_last"], rows, markdown)
    lines += [
        "",
        (
            f"b. cache-filling teacher pass over {images} images, no_grad, images/s at each "
            f"soft_label_cache.batch_size, median of {conf['repeats']['pass_repeats']} passes"
        ),
    ]
    header = [
        "model",
        *(f"{layout} b{b}" for layout in ("off", "on") for b in batches),
        "best off",
        "best on",
        "on/off at best",
        "channels_last",
    ]
    rows = []
    for r in results:
        row = analysis["per_model"][r.name]
        rows.append(
            [
                r.name,
                *(f"{r.images_per_second(layout, b, images):.0f}" for layout in ("off", "on") for b in batches),
                f"b{row['best_cache_batch']['off']}",
                f"b{row['best_cache_batch']['on']}",
                f"{row['pass_speedup_channels_last']:.2f}x",
                row["channels_last_verdict"]["teacher_pass"],
            ]
        )
    lines += table(header, rows, markdown)

    lines += [
        "",
        (
            f"c. recommended settings vs today's CPU defaults (channels_last {analysis['current']['channels_last']}, "
            f"cache batch {analysis['current']['cache_batch_size']}); speed-up = current time / recommended time"
        ),
    ]
    rows = []
    for r in results:
        row = analysis["per_model"][r.name]
        rows.append(
            [
                r.name,
                row["recommended_layout"],
                f"b{analysis['cache_batch_size']['default']}",
                ratio_text(row["step_speedup_vs_current"]),
                ratio_text(row["pass_speedup_vs_current"]),
            ]
        )
    lines += table(["model", "channels_last", "cache batch", "step speed-up", "teacher-pass speed-up"], rows, markdown)

    cl, cache = analysis["channels_last"], analysis["cache_batch_size"]
    lines += ["", "Recommendation (tolerance +-{:.0%}):".format(conf["tolerance"])]
    if cl["default"] == "per model":
        on = [name for name, flag in cl["per_model"].items() if flag]
        lines.append(f"- trainer.channels_last on CPU: per model ({cl['reason']}); on for: {', '.join(on)}")
    else:
        lines.append(f"- trainer.channels_last on CPU: {cl['default']} for all models ({cl['reason']})")
    scores = ", ".join(f"b{b} {s:.2f}" for b, s in cache["geomean_relative_throughput"].items())
    if cache["within_tolerance_for_every_model"]:
        lines.append(
            f"- soft_label_cache.batch_size: {cache['default']} for all models "
            f"(geomean throughput relative to each model's best: {scores})"
        )
    else:
        per = ", ".join(f"{name} {batch}" for name, batch in cache["per_model"].items())
        lines.append(
            f"- soft_label_cache.batch_size: {cache['default']} is best on the geometric mean ({scores}) "
            f"but not within the tolerance for every model; fastest per model: {per}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=None, help="comma list (default: every zoo model and resnet50)")
    parser.add_argument("--batch-size", type=int, default=128, help="student step batch (default: %(default)s)")
    parser.add_argument("--images", type=int, default=1024, help="images of the teacher pass (default: %(default)s)")
    parser.add_argument(
        "--cache-batches",
        default=",".join(map(str, DEFAULT_CACHE_BATCHES)),
        help="soft_label_cache.batch_size values (default: %(default)s)",
    )
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads (default: cores, %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=Repeats.warmup_steps, help="untimed steps per layout")
    parser.add_argument("--steps", type=int, default=Repeats.steps, help="timed steps per layout (median)")
    parser.add_argument("--repeats", type=int, default=Repeats.pass_repeats, help="timed teacher passes (median)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up step, 2 timed steps, 1 pass (smoke test)")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="ratios within 1 +- this count as 'same' (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown (for README.md)")
    parser.add_argument("--out", default=None, help="write every timing and the recommendation as JSON here")
    args = parser.parse_args(argv)
    args.cache_batches = sorted({int(b) for b in args.cache_batches.split(",") if b.strip()})
    args.repeats_parsed = Repeats(1, 2, 1) if args.quick else Repeats(args.warmup, args.steps, args.repeats)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    known = default_models()
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else known
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        print(f"error: --models: {', '.join(unknown) or 'empty'}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    if min(args.cache_batches, default=0) < 1 or args.images < 1 or args.batch_size < 1:
        print("error: --cache-batches/--images/--batch-size: must be positive integers", file=sys.stderr)
        return 2
    repeats: Repeats = args.repeats_parsed
    report: dict[str, Any] = {
        "config": {
            "models": models,
            "batch_size": args.batch_size,
            "images": args.images,
            "cache_batches": args.cache_batches,
            "num_classes": args.num_classes,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "repeats": asdict(repeats),
            "tolerance": args.tolerance,
            "seed": args.seed,
            "torch": torch.__version__,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_before": load_average(),
        }
    }
    results: list[ModelResult] = []
    started = time.perf_counter()
    for name in models:
        size = TORCHVISION_MODELS.get(name, CIFAR_IMAGE_SIZE)
        print(f"{name} ({size}x{size}): training steps ...", end=" ", flush=True)
        result = ModelResult(name, size)
        result.step_seconds = measure_steps(name, size, args.num_classes, args.batch_size, repeats, args.seed)
        print("teacher passes ...", end=" ", flush=True)
        result.pass_seconds = measure_passes(
            name, size, args.num_classes, args.images, args.cache_batches, repeats, args.seed
        )
        print(f"done ({time.perf_counter() - started:.0f}s so far)", flush=True)
        results.append(result)
    report["load_after"] = load_average()
    report["total_seconds"] = time.perf_counter() - started
    report["analysis"] = analyse(results, args.cache_batches, args.images, args.tolerance)
    report["timings"] = {
        r.name: {"image_size": r.image_size, "step_seconds": r.step_seconds, "pass_seconds": r.pass_seconds}
        for r in results
    }
    print()
    print(format_report(report, results, args.markdown))
    if args.out:
        write_results(args.out, report)
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
