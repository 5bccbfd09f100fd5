"""CSV inputs (manifests, labels) read the same way: every cell a string, and one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_text_csv(path: Path, what: str, error: type[Exception], missing_hint: str, sep: str = ",") -> pd.DataFrame:
    """The CSV (or, with ``sep="\t"``, TSV) at ``path`` with every cell as a string (no NaN guessing); ``error``
    names ``what`` and the file when it is missing (with ``missing_hint``) or unreadable."""
    if not path.is_file():
        raise error(f"{what} {path}: file not found; {missing_hint}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path}: not a readable CSV ({problem})") from problem
