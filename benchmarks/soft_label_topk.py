"""The soft-label cache's top-k trade-off on a trained teacher: bytes per sample against what KD reads.

Trains a teacher with kd-hydra (``mode=teacher``, the overrides below; default: a CIFAR ResNet8 on the Tiny
ImageNet subset at 32 x 32, 200 classes, three CPU epochs; kept in ``--workdir``), computes its logits on the
test split and, for each k, prints the record size, the teacher's probability mass inside the top-k at T=1 and
T=4, and KL(p || p_topk) of the reconstructed targets (the rest at their mean, as the cache decodes them), which
is what a KD term sees change.

    python benchmarks/soft_label_topk.py --data-dir /work/shared/data/tiny-imagenet-subset

``--logits FILE`` reads an (N, C) tensor of a teacher's logits instead (torch.save), e.g. an ImageNet model's
1,000-class logits from ``benchmarks/imagenet_logits.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch

TEACHER = ["mode=teacher", "dataset=tiny_imagenet", "dataset.image_size=32", "teacher=resnet8",
           "teacher_training.epochs=3", "teacher_training.batch_size=128", "trainer.device=cpu",
           "optimizer@teacher_training.optimizer=sgd", "teacher_training.optimizer.lr=0.1",
           "trainer.num_threads=2"]  # fmt: skip
KS = (1, 2, 5, 10, 20, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the teacher's run and cache (reused)")
    parser.add_argument("--logits", type=Path, default=None, help="a saved (N, C) logits tensor to measure instead")
    parser.add_argument("overrides", nargs="*", help="more overrides of the teacher's run")
    args = parser.parse_args()
    logits = torch.load(args.logits, weights_only=True) if args.logits else trained_teacher_logits(args)
    print_trade_off(logits.float())


def trained_teacher_logits(args: argparse.Namespace) -> torch.Tensor:
    """Train (or reuse) the teacher of ``TEACHER`` and return its logits on the test split."""
    from omegaconf import OmegaConf

    from kd_hydra.api import run_experiment
    from kd_hydra.data import build_pipeline, load_dataset
    from kd_hydra.instantiate import build

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        run_dir = work / "teacher"
        overrides = [*TEACHER, f"paths.data_dir={args.data_dir}", f"paths.cache_dir={work}/cache", *args.overrides]
        if not (run_dir / "metrics.json").is_file():
            run_experiment(overrides, output_dir=run_dir, progress=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"teacher: {' '.join(overrides)}: test top-1 {metrics['final_test_acc']:.2f}%")
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        OmegaConf.update(cfg, "dataset.loader.cache_dir", f"{work}/cache")
        data = load_dataset(cfg.dataset)
        spec = data.spec
        teacher = build(
            cfg.teacher, num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.image_size
        )
        (model_file,) = sorted((work / "cache" / "teachers").glob("*/model.pt"))
        payload = torch.load(model_file, map_location="cpu", weights_only=True)
        teacher.load_state_dict(payload.get("state_dict", payload))
        pipeline = build_pipeline(data, cfg.dataset, 256, "cpu", 0)
        with torch.no_grad():
            return torch.cat([teacher.eval()(x) for x, _ in pipeline.test_batches()])


def print_trade_off(logits: torch.Tensor) -> None:
    """Per k: the record's bytes, the probability mass inside the top-k and KL(p || p_topk) at T=1 and T=4."""
    from kd_hydra.stores.sharded_logits import RecordLayout

    classes = logits.shape[1]
    print(
        f"{len(logits)} test images, {classes} classes; per k: record bytes (float16), mass in the top-k, "
        "KL(p || p_topk) in nats"
    )
    for k in (*[k for k in KS if k < classes], None):
        layout = RecordLayout(classes, k, torch.float16)
        decoded = layout.decode(layout.encode(logits))
        row = [f"k={k or 'all':>4}", f"{layout.record_bytes:5d} B"]
        for temperature in (1.0, 4.0):
            p = torch.softmax(logits / temperature, dim=1)
            mass = p.topk(k or classes, dim=1).values.sum(dim=1).mean()
            q = torch.log_softmax(decoded / temperature, dim=1)
            kl = (p * (torch.log(p.clamp_min(1e-30)) - q)).sum(dim=1).mean()
            row.append(f"T={temperature:g}: mass {mass:.4f}, KL {kl:.5f}")
        print("  " + " | ".join(row))


if __name__ == "__main__":
    main()
