import sys

from bfr.cli import main

sys.exit(main())
