"""Regenerate profiles/presets/*.json from the planner (fathom.engine.presets.render_presets).

    python profiles/make_presets.py          # write the files
    python profiles/make_presets.py --check  # exit 1 if any file differs from what the planner gives
"""

from __future__ import annotations

import sys
from pathlib import Path

from fathom.engine.presets import preset_text, render_presets

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = {f"{name}.json": preset_text(content) for name, content in render_presets().items()}
    existing = {p.name for p in PRESET_DIR.glob("*.json")}
    stale = sorted(existing - set(wanted))
    changed = sorted(n for n, text in wanted.items()
                     if not (PRESET_DIR / n).exists() or (PRESET_DIR / n).read_text() != text)
    if check:
        for name in changed + stale:
            print(f"out of date: profiles/presets/{name}")
        return 1 if changed or stale else 0
    PRESET_DIR.mkdir(exist_ok=True)
    for name in changed:
        (PRESET_DIR / name).write_text(wanted[name])
    for name in stale:
        (PRESET_DIR / name).unlink()
    print(f"{len(wanted)} presets in {PRESET_DIR} ({len(changed)} written, {len(stale)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
