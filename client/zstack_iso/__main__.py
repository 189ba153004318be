"""``python -m zstack_iso``: the same as the ``zstack-iso`` command."""

import sys

from zstack_iso.cli import main

if __name__ == "__main__":
    sys.exit(main())
