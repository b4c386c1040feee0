import sys

from handgrad.app.cli import main

sys.exit(main())
