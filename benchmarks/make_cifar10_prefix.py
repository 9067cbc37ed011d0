"""Build ``cifar10-prefix.npz``, the real-image file the benchmarks read, from the official CIFAR-10 archive.

The file holds the first ``--per-file`` images (default 1017) of each of the six files of the CIFAR-10 python
version, in their order: ``data_batch_1..5`` give the training images (5,085), ``test_batch`` the test images
(1,017). Every file's published MD5 is checked before anything is unpickled. Keys: ``x_train``/``x_test``
uint8 NHWC, ``y_train``/``y_test`` int64, ``classes``: what ``dataset=arrays dataset.path=<file>`` reads.

    python benchmarks/make_cifar10_prefix.py --archive cifar-10-python.tar.gz --out cifar10-prefix.npz
    python benchmarks/make_cifar10_prefix.py --root data --out cifar10-prefix.npz   # data/cifar-10-batches-py

The archive: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (or ``python run.py`` once online, which
downloads it into ``paths.data_dir``).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_hydra.data.cifar import load_cifar  # noqa: E402
from kd_hydra.data.types import ArrayData  # noqa: E402

TRAIN_FILES = 5
PER_FILE = 1017


def prefix_arrays(data: ArrayData, per_file: int) -> dict[str, np.ndarray]:
    """The first ``per_file`` images of each training file (equal blocks, in order) and of the test file."""
    block = len(data.y_train) // TRAIN_FILES
    train = np.concatenate([np.arange(i * block, i * block + min(per_file, block)) for i in range(TRAIN_FILES)])
    test = np.arange(min(per_file, len(data.y_test)))
    return {
        "x_train": data.x_train[train].permute(0, 2, 3, 1).numpy(),
        "y_train": data.y_train[train].numpy(),
        "x_test": data.x_test[test].permute(0, 2, 3, 1).numpy(),
        "y_test": data.y_test[test].numpy(),
        "classes": np.array(data.spec.classes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--archive", type=Path, help="cifar-10-python.tar.gz")
    source.add_argument("--root", type=Path, help="a directory holding cifar-10-batches-py/")
    parser.add_argument("--per-file", type=int, default=PER_FILE)
    parser.add_argument("--out", type=Path, default=Path("cifar10-prefix.npz"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if args.archive is not None:
            with tarfile.open(args.archive) as archive:
                archive.extractall(scratch, filter="data")
            root = Path(scratch)
        arrays = prefix_arrays(load_cifar(root=str(root), variant="cifar10"), args.per_file)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['y_train'])} train / {len(arrays['y_test'])} test images")


if __name__ == "__main__":
    main()
