"""Stable ids shared by the suites and the COCO protocol (a leaf module: it imports nothing of the package)."""

from __future__ import annotations

import hashlib


def prompt_id(suite: str, text: str) -> str:
    """Stable id: suite name + 12 hex digits of sha256(text)."""
    return f"{suite}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
