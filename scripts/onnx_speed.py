"""Images per second of an exported LeNet-5 in onnxruntime against portacnn's own ``predict``,
both at one thread, same process, interleaved (docs/performance.md, "Serving an exported model").

    python scripts/onnx_speed.py [--batch 256] [--rounds 7]

Needs ``portacnn[onnx]`` and ``onnxruntime``. Prints one line per LeNet-5 variant: the best
round of each side (a round runs 2048 images in batches of ``--batch``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from portacnn.models import MODELS


def best_rates(runs, images: int, rounds: int) -> list[float]:
    """Images per second of each of ``runs``, best of ``rounds``, the runs interleaved."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for k, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            best[k] = min(best[k], time.perf_counter() - t0)
    return [images / seconds for seconds in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((2048, 1, 28, 28)).astype(np.float32)
    batches = [x[i:i + args.batch] for i in range(0, len(x), args.batch)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    print(f"onnxruntime {ort.__version__}, batch {args.batch}, 1 thread, best of {args.rounds}")
    for name in ("lenet5", "lenet5-relu"):
        model = MODELS[name]()
        with tempfile.TemporaryDirectory() as tmp:
            path = model.export_onnx(Path(tmp) / "m.onnx")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        def served():
            for b in batches:
                session.run(None, {"input": b})

        def predicted():
            for b in batches:
                model.predict(b, batch_size=args.batch)

        with model.backend.limit_threads(1):
            served(), predicted()                              # warm-up
            onnx_rate, predict_rate = best_rates([served, predicted], len(x), args.rounds)
        print(f"{name:12s} onnxruntime {onnx_rate:9,.0f} images/s   portacnn predict "
              f"{predict_rate:9,.0f} images/s   ratio {onnx_rate / predict_rate:.2f}")


if __name__ == "__main__":
    main()
