"""`python -m stretto.engine.cli`: the `stretto` command."""

import sys

from stretto.engine.cli import main

sys.exit(main())
