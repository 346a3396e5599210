"""HTML rendering of sampled preimages (notebook ``_repr_html_`` and standalone pages).

The display follows InversionView (Huang et al. 2024, Sec. 3 and its figures): the query
input with the queried position highlighted, then the samples sorted by distance, each
token's background coloured by ``p(tok | prefix, z_q) - p(tok | prefix, z_BOS)`` (red for
positive: the activation made the token likelier than the prior did; blue for negative;
opacity grows with the magnitude, full at 1), the matched position boxed, the distance and
an in-preimage mark. Every piece of text from tokens or metadata is ``html.escape``-d.

Rendering reads only plain attributes of the result (``df``, ``vocab``, ``query_tokens``,
...), so it works on any object shaped like :class:`tl_inversion.sampling.PreimageResult`.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

__all__ = ["colour_css", "render_tokens", "render_preimage", "html_page"]

_CSS = """
.tli-preimage { font-family: ui-sans-serif, system-ui, sans-serif; font-size: 13px; }
.tli-preimage .tli-head { margin: 0 0 6px 0; }
.tli-preimage .tli-note { color: #555; font-style: italic; margin: 2px 0 6px 0; }
.tli-preimage .tli-seq { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre; }
.tli-preimage .tli-tok { padding: 1px 1px; margin: 0 0.5px; border-radius: 2px; }
.tli-preimage .tli-special { color: #999; }
.tli-preimage .tli-match { outline: 2px solid #111; text-decoration: underline; }
.tli-preimage .tli-qpos { outline: 2px solid #111; background: #ffe066; font-weight: bold; }
.tli-preimage table { border-collapse: collapse; }
.tli-preimage th, .tli-preimage td { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eee; }
.tli-preimage td.tli-num { text-align: right; font-variant-numeric: tabular-nums; }
.tli-preimage tr.tli-out { opacity: 0.6; }
"""


def colour_css(value: float | int | None) -> str:
    """CSS background for a colour value in ``[-1, 1]``: red if positive, blue if negative.

    Args:
        value: ``p(tok | z_q) - p(tok | z_BOS)``; ``None`` or NaN gives no background.

    Returns:
        A CSS declaration such as ``"background: rgba(220, 38, 38, 0.500)"`` (opacity
        ``min(|value|, 1)``), or ``""``.
    """
    if value is None or not math.isfinite(value):
        return ""
    alpha = min(abs(float(value)), 1.0)
    if alpha < 0.0005:  # would print as 0.000
        return ""
    rgb = "220, 38, 38" if value > 0 else "37, 99, 235"
    return f"background: rgba({rgb}, {alpha:.3f})"


def _tok_str(vocab: Sequence[str], tok: int) -> str:
    return vocab[tok] if 0 <= tok < len(vocab) else f"<{tok}>"


def render_tokens(
    tokens: Sequence[int],
    vocab: Sequence[str],
    *,
    colours: Sequence[float] | None = None,
    match: int | None = None,
    query_pos: int | None = None,
    special_ids: Sequence[int] = (),
    start: int = 0,
) -> str:
    """Tokens as escaped ``<span>``s with colour, matched-position and query marks.

    Args:
        tokens: token ids of one input.
        vocab: token strings by id.
        colours: colour value of ``tokens[i]`` at ``colours[i - 1]`` (aligned with
            ``tokens[1:]``), or ``None``.
        match: index to box as the matched position.
        query_pos: index to highlight as the queried position.
        special_ids: ids shown greyed out (BOS, EOS, PAD).
        start: first index to render (1 skips BOS).

    Returns:
        An HTML fragment.
    """
    parts = []
    special = set(int(i) for i in special_ids)
    for i in range(start, len(tokens)):
        tok = int(tokens[i])
        classes = ["tli-tok"]
        if tok in special:
            classes.append("tli-special")
        if match is not None and i == match:
            classes.append("tli-match")
        if query_pos is not None and i == query_pos:
            classes.append("tli-qpos")
        style, title = "", f"pos {i}, id {tok}"
        if colours is not None and 1 <= i <= len(colours):
            value = colours[i - 1]
            style = colour_css(value)
            if value is not None and math.isfinite(value):
                title += f", p(z_q) - p(z_BOS) = {value:+.3f}"
        if match is not None and i == match:
            title += ", matched position"
        if query_pos is not None and i == query_pos:
            title += ", queried position"
        style_attr = f' style="{html.escape(style)}"' if style else ""
        parts.append(
            f'<span class="{" ".join(classes)}"{style_attr} title="{html.escape(title)}">'
            f"{html.escape(_tok_str(vocab, tok))}</span>"
        )
    return '<span class="tli-seq">' + "".join(parts) + "</span>"


def _query_tokens_shown(tokens: Sequence[int], position: int, special: set[int]) -> list[int]:
    """Drop trailing padding: special tokens after a special token (keeps EOS and ``position``)."""
    end = len(tokens)
    while end > max(position + 1, 2) and int(tokens[end - 1]) in special and int(tokens[end - 2]) in special:
        end -= 1
    return list(tokens[:end])


def render_preimage(result: Any, *, note: str = "") -> str:
    """HTML fragment of a query and every row of ``result.df`` (one ``<tr>`` per sample).

    Args:
        result: a :class:`~tl_inversion.sampling.PreimageResult` (or an object with its
            attributes).
        note: an optional line shown under the header (escaped).

    Returns:
        ``<div class="tli-preimage">...</div>`` with its own ``<style>``; sample rows carry
        ``class="tli-sample"``.
    """
    df = result.df
    vocab = list(result.vocab)
    special = tuple(result.special_ids)
    n = len(df)
    n_in = int(df["in_preimage"].sum()) if n else 0
    head = (
        f"<b>site</b> {html.escape(str(result.site))} &middot; <b>position</b> {int(result.position)} "
        f"&middot; <b>metric</b> {html.escape(str(result.metric))} &middot; <b>&epsilon;</b> "
        f"{float(result.epsilon):g} &middot; <b>||z_q||</b> {float(result.z_q_norm):.4g} &middot; "
        f"{n} samples, {n_in} inside &epsilon;"
    )
    q_tokens = _query_tokens_shown(result.query_tokens, int(result.position), set(special))
    query = render_tokens(q_tokens, vocab, query_pos=int(result.position), special_ids=special)
    out = [f"<style>{_CSS}</style>", '<div class="tli-preimage">', f'<div class="tli-head">{head}</div>']
    if note:
        out.append(f'<div class="tli-note">{html.escape(note)}</div>')
    out.append(f'<div class="tli-head"><b>query</b> {query}</div>')
    out.append(
        "<table><thead><tr><th>#</th><th>sample</th><th>D</th><th>in &epsilon;</th>"
        "<th>valid</th><th>T</th><th>noise</th>"
        '<th title="how often this exact sample occurs in the pool (column count)">&times; in pool</th>'
        "</tr></thead><tbody>"
    )
    has_colour = "colour" in df.columns
    for i, row in enumerate(df.itertuples(index=False)):
        colours = getattr(row, "colour", None) if has_colour else None
        if colours is not None and not isinstance(colours, (list, tuple)):
            colours = None
        match = int(row.matched_pos)
        seq = render_tokens(
            row.tokens, vocab, colours=colours, match=match if match >= 0 else None, special_ids=special, start=1
        )
        inside = bool(row.in_preimage)
        mark = "&#10003;" if inside else "&#10007;"
        dist = float(row.distance)
        dist_s = f"{dist:.4f}" if math.isfinite(dist) else "inf"
        out.append(
            f'<tr class="tli-sample {"tli-in" if inside else "tli-out"}"><td class="tli-num">{i}</td>'
            f"<td>{seq}</td><td class=\"tli-num\">{dist_s}</td><td>{mark}</td>"
            f"<td>{'yes' if bool(row.valid) else 'no'}</td><td class=\"tli-num\">{float(row.temperature):g}</td>"
            f"<td class=\"tli-num\">{float(row.noise):g}</td><td class=\"tli-num\">{int(row.count)}</td></tr>"
        )
    out.append("</tbody></table>")
    ticks = (-1, -0.5, -0.1, 0.1, 0.5, 1)
    scale = " ".join(f'<span class="tli-tok" style="{colour_css(v)}">{v:+g}</span>' for v in ticks)
    out.append(
        '<div class="tli-note">Token background: p(token | prefix, z_q) &minus; p(token | prefix, z_BOS), '
        f"scale {scale} (the activation, rather than the decoder's prior, chose red tokens). "
        "Boxed: matched position. Query: highlighted position.</div>"
    )
    out.append("</div>")
    return "\n".join(out)


def html_page(fragment: str, title: str = "InversionView") -> str:
    """A standalone HTML5 page around a fragment (the title is escaped).

    Args:
        fragment: HTML from :func:`render_preimage`.
        title: page title.

    Returns:
        The whole document as a string.
    """
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{fragment}\n</body>\n</html>\n"
    )
