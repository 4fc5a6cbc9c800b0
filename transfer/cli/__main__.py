"""``python -m transfer.cli ARGUMENTS``: the ``transfer`` command without its installed script."""

import sys

from transfer.cli.main import main

sys.exit(main())
