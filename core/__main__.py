import sys

from genre_sweep.cli import main

sys.exit(main())
