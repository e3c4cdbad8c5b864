"""Figure helpers shared by the participant and group reports: matplotlib without a display,
and figures embedded in self-contained HTML as PNG data URIs."""
from __future__ import annotations

import base64
import io


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display on clusters)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_uri(fig, *, dpi: int = 90, facecolor=None, tight: bool = True) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (closed afterwards; no timestamp in the
    PNG, so the same figure gives the same bytes). ``tight=False`` keeps the figure's canvas
    (one draw less; two figures of one layout then overlay pixel for pixel)."""
    plt = pyplot()
    buf = io.BytesIO()
    kwargs = {"facecolor": facecolor} if facecolor is not None else {}
    if tight:
        kwargs["bbox_inches"] = "tight"
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, **kwargs)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
