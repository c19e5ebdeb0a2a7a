"""Pretrain with MAE: `python -m ssl_siamese.recipes.mae --config recipes/cifar10_mae.yaml [--help]`.

With no arguments: ViT-B/16 (timm, 224 px) as in the paper, which does not fit CIFAR-10's 32-pixel default
data (the recipe says so and how to size it): give a config (recipes/cifar10_mae.yaml: ViT-S with 4-pixel
patches; recipes/imagenette_mae.yaml: ViT-B/16 at 224 px) or --model.backbone_kwargs.
"""

from ssl_siamese.cli.lightning import main
from ssl_siamese.methods.mae import MAE

if __name__ == "__main__":
    main(MAE, "mae")
