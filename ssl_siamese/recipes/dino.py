"""Pretrain with DINO: `python -m ssl_siamese.recipes.dino [--config recipes/<file>.yaml] [--help]`.

With no arguments: ResNet-18 with CIFAR stem on CIFAR-10 (downloaded into ./data), batch 512, 200 epochs,
2 global views + 6 local views (``--model.local_views``, ``--model.local_size``).
"""

from ssl_siamese.cli.lightning import main
from ssl_siamese.methods.dino import DINO

if __name__ == "__main__":
    main(DINO, "dino")
