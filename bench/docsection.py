"""Write a benchmark's figures into its marked section of a Markdown page, leaving the rest as it is.

    write_section(ROOT / "docs" / "BENCHMARKS.md", "overhead", body, "## Framework overhead")

replaces what stands between `<!-- overhead:start -->` and `<!-- overhead:end -->`; a page without the markers
gets them appended, under `heading` (and optional `intro`), so a first run creates its section.
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, body: str, heading: str, intro: str = "") -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    body = body if body.endswith("\n") else body + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{body}{end}{rest.split(end, 1)[1]}"
    else:
        text += f"\n{heading}\n\n{intro + chr(10) + chr(10) if intro else ''}{start}\n{body}{end}\n"
    path.write_text(text)
