import sys

from kfaclab.cli import main

sys.exit(main())
