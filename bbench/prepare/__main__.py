"""`python -m bbench.prepare DATASET --raw DIR --out DIR ...` (same as `bbench prepare`)."""
import sys

from bbench.prepare.cli import main

sys.exit(main())
