"""What the commands print: tables of rows, the slides that worked, noted or failed, and where their outputs went."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pathme.console import LOG_FILE


def print_table(rows: list[dict[str, object]]) -> None:
    """Rows of equal keys as left-aligned columns under their names."""
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}
    for row in [dict(zip(columns, columns, strict=True)), *rows]:  # left-aligned: names read like a list
        print("  ".join(str(row[column]).ljust(widths[column]) for column in columns).rstrip())


def print_outputs(folder: Path, outputs: list[tuple[str, Path | str]]) -> None:
    """One line per output a command wrote (those that exist; text is printed as it is), then its log (written in
    full as the command ends)."""
    for name, where in outputs:
        if not isinstance(where, Path):
            print(f"{name}: {where}")
        elif where.exists():
            print(f"{name}: {where.resolve()}")
    print(f"log: {(Path(folder) / LOG_FILE).resolve()}")


def tensorboard_hint(folder: Path) -> str:
    """The shell command that shows the TensorBoard logs in ``folder`` (printed as a run's TensorBoard output)."""
    return f"tensorboard --logdir {Path(folder).resolve()}"


def print_slide_report(summary: pd.DataFrame, columns: list[str]) -> int:
    """Print the slides that worked as a table of ``columns``, each note on its own line, and one line naming the
    slides that failed (each one's reason was its one console line when it failed, and is in the summary); 1 when
    any slide failed (its ``error`` is not empty)."""
    summary = summary.assign(note=summary["note"].fillna(""), error=summary["error"].fillna(""))
    failed = summary["error"].astype(bool)
    if (~failed).any():
        print(summary.loc[~failed, columns].to_string(index=False))
    for slide_id, note in summary.loc[summary["note"].astype(bool), ["slide_id", "note"]].itertuples(index=False):
        print(f"NOTE {slide_id}: {note}")
    print_failed(list(summary.loc[failed, "slide_id"]))
    return int(failed.any())


def print_failed(slides: list[str]) -> None:
    """One line for every slide that failed (their reasons are in the summary CSV and were logged as they failed)."""
    if slides:
        shown = ", ".join(slides[:10]) + (f" and {len(slides) - 10} more" if len(slides) > 10 else "")
        print(f"FAILED {len(slides)} slide(s): {shown} (the reason of each: its error line above, and the summary)")
