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


def png_uri(fig, *, dpi: int = 90, facecolor=None) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (closed afterwards; no timestamp in the
    PNG, so the same figure gives the same bytes)."""
    plt = pyplot()
    buf = io.BytesIO()
    kwargs = {"facecolor": facecolor} if facecolor is not None else {}
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None},
                **kwargs)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
