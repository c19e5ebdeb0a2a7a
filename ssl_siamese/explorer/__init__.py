"""The embedding explorer: one self-contained HTML page to look at a set of image embeddings.

``python -m ssl_siamese.recipes.explore --embeddings embeddings.npz --images photos/ --out explore.html``
writes it; :mod:`.page` describes the page, :mod:`.neighbours` the neighbour lists and duplicate pairs,
:mod:`.projection` the 2-D map, :mod:`.thumbnails` the images.

Example:
    >>> from ssl_siamese.explorer import load_embeddings, write_explorer
    >>> write_explorer(load_embeddings("embeddings.npz"), "explore.html", image_root="photos/")["bytes"]
    1843211
"""

from ssl_siamese.explorer.page import (Embeddings, explorer_data, load_embeddings, read_page_data, render_page,
                                       write_explorer)

__all__ = ["Embeddings", "explorer_data", "load_embeddings", "read_page_data", "render_page", "write_explorer"]
