"""Allow ``python -m scriptgen``."""

import sys

from scriptgen.cli import main

sys.exit(main())
