import sys

from .background import main

sys.exit(main())
