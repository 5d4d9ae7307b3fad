"""``python -m agent``: run the sidecar agent."""

from .cli import main

raise SystemExit(main())
