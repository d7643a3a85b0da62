"""``python -m hpcpipe.jobside``: run one task record in this process and report it."""
import sys

from .run import main

sys.exit(main())
