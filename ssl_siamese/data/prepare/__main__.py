"""``python -m ssl_siamese.data.prepare SRC OUT_DIR [options]``: see :mod:`ssl_siamese.data.prepare`."""

import sys

from ssl_siamese.data.prepare import main

sys.exit(main())
