"""Pretrain with NNCLR: `python -m ssl_siamese.recipes.nnclr [--config recipes/<file>.yaml] [--help]`.

With no arguments: ResNet-18 with CIFAR stem on CIFAR-10 (downloaded into ./data), batch 512, 200 epochs.
"""

from ssl_siamese.cli.lightning import main
from ssl_siamese.methods.nnclr import NNCLR

if __name__ == "__main__":
    main(NNCLR, "nnclr")
