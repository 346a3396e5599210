"""A :class:`~tl_inversion.inversion.result.PreimageResult` as HTML: notebook fragment and page.

The pieces (token colours, the table of samples, the page shell) are in :mod:`.html`; this
module decides what of a result is shown: a pool larger than ``max_rows`` is shown through
the paper's display sample (about 60-80 % of the shown rows inside epsilon, InversionView
Sec. 3), with a note giving the whole pool's fractions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tl_inversion.viewer.html import html_page, render_preimage

__all__ = ["preimage_fragment", "write_preimage_page"]


def preimage_fragment(result: Any, max_rows: int | None = 100) -> str:
    """HTML fragment of a query and its samples (:func:`~tl_inversion.viewer.html.render_preimage`).

    Args:
        result: a :class:`~tl_inversion.inversion.result.PreimageResult` (or an object with
            its attributes and ``display_sample``).
        max_rows: a pool larger than this is shown through ``result.display_sample(k=max_rows)``
            with a note on the whole pool; ``None`` shows every row.

    Returns:
        The HTML (a ``<div>``) as a string.
    """
    shown, note = result, ""
    df = result.df
    if max_rows is not None and len(df) > max_rows and not result.is_display:
        shown = result.display_sample(k=max_rows)
        note = (
            f"Showing {len(shown.df)} of {len(df)} candidates, drawn as in the paper so that about "
            f"60-80% lie inside epsilon; in the whole pool "
            f"{float(df['in_preimage'].mean()):.0%} lie inside epsilon and "
            f"{float(df['valid'].mean()):.0%} are well-formed (the full pool is in .df)"
        )
    return render_preimage(shown, note=note)


def write_preimage_page(result: Any, path: str | Path, max_rows: int | None = 100) -> Path:
    """Write a standalone HTML page of a query and its samples.

    Args:
        result: as :func:`preimage_fragment`.
        path: the file to write (parent folders are created).
        max_rows: as :func:`preimage_fragment`.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"InversionView preimage: {result.site} @ {result.position}"
    path.write_text(html_page(preimage_fragment(result, max_rows), title=title), encoding="utf-8")
    return path
