"""``python -m ketabids``: the same CLI as the ``ketabids`` console script."""
from ketabids.cli import main

raise SystemExit(main())
