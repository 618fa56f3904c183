"""``python -m xailab.cli``: the ``xailab`` command."""

import sys

from xailab.cli import main

sys.exit(main())
