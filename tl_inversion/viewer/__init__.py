"""Viewers for InversionView results: HTML for notebooks and browsers (:mod:`.html`)."""

from tl_inversion.viewer.html import colour_css, html_page, render_preimage, render_tokens

__all__ = ["colour_css", "html_page", "render_preimage", "render_tokens"]
