"""`python -m quantfair`: the `quantfair` command."""

import sys

from quantfair.cli import main

sys.exit(main())
