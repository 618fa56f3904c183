import sys

from xailab.cli import main

sys.exit(main())
