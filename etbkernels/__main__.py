"""``python -m etbkernels train|eval|plot`` (see etbkernels/cli.py and docs/training.md)."""
import sys

from .cli import main

sys.exit(main())
