"""`python -m ml_persistence` runs the command line."""

import sys

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before the command got going
    code = 130
sys.exit(code)
