#!/usr/bin/env python
"""Train LeNet-5 on MNIST: ``python scripts/train.py --device cpu|gpu [--epochs 10 ...]``.

The same as ``python -m portacnn train``; ``--help`` lists the options.
"""

import sys

from portacnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
