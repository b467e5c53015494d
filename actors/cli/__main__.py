"""`python -m spindle.actors.cli`: the `spindle` command."""

import sys

from .entry import main

sys.exit(main())
