"""Figure helpers shared by the participant and group reports: matplotlib without a display,
and figures embedded in self-contained HTML as PNG or SVG data URIs.

A figure is shown at the size it was drawn: :class:`Image` carries its data URI and its CSS size,
and :meth:`Image.tag` writes ``width``/``height`` attributes, so the page never upscales (blurs)
an image. Charts are SVG (vector, text kept as text in the page's font); brain images are PNG
drawn at twice the shown size (sharp on high-density screens).
"""
from __future__ import annotations

import base64
import html
import io
import re
import struct
from dataclasses import dataclass

#: Device pixels per CSS pixel of the PNG figures (2 = sharp on high-density screens).
PNG_SCALE = 2
#: CSS pixels per inch (the CSS reference pixel): a figure of w inches is shown w * 96 px wide.
CSS_DPI = 96
#: The one font scale of the group figures (points; 1 pt = 4/3 CSS px at the shown size).
FONT_SIZE = 9.0
STYLE = {"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1, "axes.labelsize": FONT_SIZE,
         "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1,
         "legend.fontsize": FONT_SIZE - 1, "font.family": "sans-serif", "svg.fonttype": "none",
         "svg.hashsalt": "ketabids", "axes.spines.top": False, "axes.spines.right": False}


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display on clusters)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def quantize_png(data: bytes, colours: int) -> bytes:
    """``data`` (PNG bytes) with a palette of at most ``colours`` colours (median cut), saved
    optimised: a fraction of the size for the flat colours of slices and screenshots."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.convert("RGB").quantize(colours, method=PILImage.Quantize.MEDIANCUT).save(
            out, format="PNG", optimize=True)
    return out.getvalue()


def png_uri(fig, *, dpi: int = 90, facecolor=None, tight: bool = True,
            compress_level: int = 6) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (closed afterwards; no timestamp in the
    PNG, so the same figure gives the same bytes). ``tight=False`` keeps the figure's canvas
    (one draw less; two figures of one layout then overlay pixel for pixel).
    ``compress_level``: zlib level of the PNG (1 for a PNG that is re-encoded anyway, e.g. with
    a palette by :func:`quantize_png`: the same pixels, less CPU)."""
    plt = pyplot()
    buf = io.BytesIO()
    kwargs = {"facecolor": facecolor} if facecolor is not None else {}
    if tight:
        kwargs["bbox_inches"] = "tight"
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None},
                pil_kwargs={"compress_level": compress_level}, **kwargs)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Image:
    """An embedded figure: its data URI and the CSS size (px) at which the page shows it."""

    uri: str
    width: int
    height: int

    def tag(self, alt: str, **attrs) -> str:
        """``<img>`` with ``width``/``height`` (never shown larger than drawn) and ``alt``."""
        extra = "".join(f' {k.replace("_", "-")}="{html.escape(str(v))}"'
                        for k, v in attrs.items())
        return (f'<img src="{self.uri}" width="{self.width}" height="{self.height}" '
                f'alt="{html.escape(alt)}"{extra}>')

    def startswith(self, prefix: str) -> bool:  # convenience for checks on the URI
        return self.uri.startswith(prefix)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes (from the IHDR chunk)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def png_image(fig, *, scale: int = PNG_SCALE, facecolor=None, colours: int | None = 256
              ) -> Image:
    """``fig`` as PNG drawn at ``scale`` device pixels per CSS pixel, shown at its inch size
    x 96 px (tight bounding box); closed afterwards. ``colours``: palette size of the stored
    PNG (256 keeps colour maps smooth and makes the file about 3 times smaller; None = RGBA)."""
    plt = pyplot()
    buf = io.BytesIO()
    kwargs = {"facecolor": facecolor} if facecolor is not None else {}
    # a PNG re-encoded with a palette below is written with the quickest zlib level first
    fig.savefig(buf, format="png", dpi=CSS_DPI * scale, metadata={"Software": None},
                bbox_inches="tight", pil_kwargs={"compress_level": 1 if colours else 6},
                **kwargs)
    plt.close(fig)
    data = buf.getvalue()
    if colours:
        data = quantize_png(data, colours)
    w, h = png_size(data)
    return Image("data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                 w // scale, h // scale)


_SVG_SIZE = re.compile(rb'<svg[^>]*?width="([0-9.]+)pt"[^>]*?height="([0-9.]+)pt"', re.S)


def svg_image(fig) -> Image:
    """``fig`` as SVG (text kept as text), shown at its drawn size; closed afterwards."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    data = buf.getvalue()
    match = _SVG_SIZE.search(data)
    w, h = (float(match.group(1)), float(match.group(2))) if match else (400.0, 300.0)
    return Image("data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii"),
                 round(w * 4 / 3), round(h * 4 / 3))
