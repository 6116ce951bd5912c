"""``python -m jaxdiv.train``: see :mod:`jaxdiv.train.main`."""

import sys

from jaxdiv.train.main import main

sys.exit(main())
