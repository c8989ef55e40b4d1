import sys

from fipgraph.cli import main

sys.exit(main())
