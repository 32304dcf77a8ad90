import sys

from statusek.app.cli import main

sys.exit(main())
