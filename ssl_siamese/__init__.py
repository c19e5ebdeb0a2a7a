"""ssl_siamese: Siamese self-supervised learning on PyTorch Lightning."""
