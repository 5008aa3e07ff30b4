"""``python -m alerts tail|route|schema ...`` (the same commands as ``safety-monitor alerts ...``)."""

import sys

from alerts.cli import main

sys.exit(main())
