"""``make bench``: run every benchmark row, print one table, write bench/results.json."""

from __future__ import annotations

from .core import main

raise SystemExit(main())
