"""``python -m fuzz.cli``: the ``pfndiff`` command without its console script."""

import sys

from fuzz.cli.app import main

sys.exit(main())
