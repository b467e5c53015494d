"""`python -m spindle.actors.cli`: the `spindle` command."""

import sys

from .main import main

sys.exit(main())
