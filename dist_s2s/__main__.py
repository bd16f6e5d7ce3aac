import sys

from dist_s2s.cli import main

sys.exit(main())
