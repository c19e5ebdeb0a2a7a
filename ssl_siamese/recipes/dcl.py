"""Pretrain with DCL: `python -m ssl_siamese.recipes.dcl [--config recipes/<file>.yaml] [--help]`.

DCLW: add `--model.weighted true` (and `--model.sigma`).

With no arguments: ResNet-18 with CIFAR stem on CIFAR-10 (downloaded into ./data), batch 512, 200 epochs.
"""

from ssl_siamese.cli.lightning import main
from ssl_siamese.methods.dcl import DCL

if __name__ == "__main__":
    main(DCL, "dcl")
