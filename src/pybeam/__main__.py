"""``python -m pybeam``: the ``pybeam`` command (see :mod:`pybeam.cli`)."""

from pybeam.cli import main

raise SystemExit(main())
