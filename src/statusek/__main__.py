import sys

from statusek.cli.main import main

sys.exit(main())
