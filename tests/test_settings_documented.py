"""Every `NEURAL_*` setting the platform reads has a row in the README's Settings section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("libs", "services", "gateway", "scripts")
NAME = re.compile(r"NEURAL_[A-Z0-9_]+")
# Per-service names (NEURAL_COMPILER_PORT, ...) are documented once, as pattern rows.
SERVICES = ("COMPILER", "TRAINER", "TRACKER", "DEPLOYER", "AUTHZ", "RATELIMIT")
PATTERN = re.compile(rf"NEURAL_(?:{'|'.join(SERVICES)})_(PORT|METRICS_PORT|ADDRESS)")


def settings_in_code(root: Path) -> set[str]:
    """The full `NEURAL_*` names in the platform's Python sources (prefixes such as
    `NEURAL_WEBHOOK_` are skipped: they only build or describe full names)."""
    names: set[str] = set()
    for folder in CODE_DIRS:
        for path in (root / folder).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            found = NAME.findall(path.read_text(encoding="utf-8"))
            names.update(name for name in found if not name.endswith("_"))
    return names


def settings_section(readme: str) -> str:
    """The text of `## Settings`, up to the next second-level heading."""
    match = re.search(r"^## Settings\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Settings' section followed by another '## ' section"
    return match.group(1)


def documented(section: str) -> set[str]:
    """The names in the first cell of the section's table rows."""
    names: set[str] = set()
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`(NEURAL_[A-Z0-9_<>]+)`", cells[1]))
    return names


def undocumented(root: Path) -> list[str]:
    """The settings the code reads that have no row (nor a pattern row) in the README."""
    rows = documented(settings_section((root / "README.md").read_text(encoding="utf-8")))
    missing = []
    for name in sorted(settings_in_code(root)):
        per_service = PATTERN.fullmatch(name)
        row = f"NEURAL_<SERVICE>_{per_service.group(1)}" if per_service else name
        if row not in rows:
            missing.append(name)
    return missing


def test_every_setting_has_a_row() -> None:
    assert undocumented(ROOT) == []


def test_the_scan_finds_the_settings() -> None:
    # A broken scan (wrong folders, wrong pattern) would pass the test above vacuously.
    names = settings_in_code(ROOT)
    assert {"NEURAL_DATABASE_URL", "NEURAL_REDIS_URL", "NEURAL_WEBHOOK_MAX_RETRIES"} <= names
    assert not any(name.endswith("_") for name in names)


def test_pattern_rows_are_documented() -> None:
    rows = documented(settings_section((ROOT / "README.md").read_text(encoding="utf-8")))
    for suffix in ("PORT", "METRICS_PORT", "ADDRESS"):
        assert f"NEURAL_<SERVICE>_{suffix}" in rows


def test_a_new_setting_without_a_row_fails(tmp_path: Path) -> None:
    # The same check on a copy whose code reads one more, undocumented, setting.
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text(encoding="utf-8"))
    for folder in CODE_DIRS:
        (tmp_path / folder).mkdir()
    new = 'import os\n\nos.environ.get("NEURAL_NOT_A_REAL_SETTING")\n'
    (tmp_path / "libs" / "new_setting.py").write_text(new)
    (tmp_path / "services" / "compiler_pb2.py").write_text('"NEURAL_GENERATED_NAME"\n')
    (tmp_path / "services" / "ports.py").write_text('"NEURAL_TRACKER_METRICS_PORT"\n')
    assert undocumented(tmp_path) == ["NEURAL_NOT_A_REAL_SETTING"]
