"""``python -m neurostep ...`` runs the command-line interface."""

import sys

from neurostep.cli import main

sys.exit(main())
