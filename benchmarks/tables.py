"""What a benchmark writes: its figures as JSON and as a Markdown table beside it, each
written atomically (a run stopped half-way leaves the previous files), and the table
printed."""

from __future__ import annotations

from pathlib import Path

from astrodenoise import io


def write_tables(stem: str | Path, data: dict, text: str) -> None:
    """``<stem>.json`` holding ``data`` and ``<stem>.md`` holding ``text``; print ``text``."""
    io.write_json(f"{stem}.json", data)
    with io.atomic_path(f"{stem}.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(text)
