"""Timestamps of commits, tags, notes and reflog entries: UTC, explicit, microseconds.

``2026-11-24T05:16:26.123456Z``: ISO 8601 with a ``Z``, so that timestamps
written anywhere compare as strings in time order.
"""

from __future__ import annotations

import time


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
