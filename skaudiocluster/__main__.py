"""``python -m skaudiocluster``: the command line (see :mod:`skaudiocluster.cli`)."""

import sys

from skaudiocluster.cli import main

sys.exit(main())
