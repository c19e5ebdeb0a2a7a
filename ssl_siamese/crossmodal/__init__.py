"""Cross-modal Siamese: an image tower and a text tower trained into one space (CLIP's symmetric loss).

- :mod:`~ssl_siamese.crossmodal.icons`: Debian icon themes as image-text pairs (fetched and cached).
- :mod:`~ssl_siamese.crossmodal.datamodule`: the pairs split by icon name, batched and tokenized.
- :mod:`~ssl_siamese.crossmodal.loss`: :class:`CLIPLoss`, symmetric InfoNCE, learned temperature, DDP-gathered.
- :mod:`~ssl_siamese.crossmodal.module`: :class:`CrossModalCLIP`, the two towers as a LightningModule.
- :mod:`~ssl_siamese.crossmodal.retrieval`: text-to-image and image-to-text Recall@K and chance.

Recipe: ``python -m ssl_siamese.recipes.cross_modal --config recipes/cross_modal_icons.yaml``.
"""
