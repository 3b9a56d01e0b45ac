"""The one progress convention in AADS: ``progress(done, total)`` after each unit of work.

Library code only calls the callback; the CLI draws rich bars and KFP components log lines
from the same calls. ``total`` is 0 when the amount of work is not known in advance.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
