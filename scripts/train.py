#!/usr/bin/env python
"""Train a network (LeNet-5 by default) on MNIST: ``python scripts/train.py --device cpu|gpu [--epochs 10 ...]``.

The same as ``python -m portacnn train``; ``--help`` lists the options.
"""

import sys

from portacnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
