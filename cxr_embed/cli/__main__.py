"""``python -m cxr_embed.cli`` runs the ``cxr-embed`` command line."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
