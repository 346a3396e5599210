"""Viewers for InversionView results: HTML pieces (:mod:`.html`) and whole preimage views
for notebooks and browsers (:mod:`.preimage`).
"""

from tl_inversion.viewer.html import colour_css, html_page, render_preimage, render_tokens
from tl_inversion.viewer.preimage import preimage_fragment, write_preimage_page

__all__ = ["colour_css", "html_page", "preimage_fragment", "render_preimage", "render_tokens", "write_preimage_page"]
