import sys

from zstack_gateway.cli import main

sys.exit(main())
