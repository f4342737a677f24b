"""Debian's Chromium, headless, as the browser tests and bench/web.py drive it through
Playwright (Playwright's own browser downloads are never used: `make setup` installs the
chromium package)."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
