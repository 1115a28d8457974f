"""`python -m aidp_metrics.cli`: the same as the `aidp-metrics` command."""

import sys

from . import main

sys.exit(main())
