"""``python -m rest`` is the same as the ``rest-react`` console script."""

from rest.cli import main

raise SystemExit(main())
