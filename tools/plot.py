"""The figures of the docs, drawn with matplotlib (the optional `plots` extra: pip install ".[plots]"):
readable type, the legend outside the curves, a light grid."""
from __future__ import annotations

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.dpi": 150}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('figures need matplotlib: pip install ".[plots]" (or pip install matplotlib)') from None
    matplotlib.use("Agg")                             # files only, no screen
    import matplotlib.pyplot as plt
    return plt


def line_chart(path, series, title="", xlabel="", ylabel="", size=(7.0, 4.6), xlim=None, ylim=None):
    """series: list of (label, xs, ys[, style]) with style "line" (default) or "points". Writes a PNG; the
    legend goes below the axes, where it covers no curve."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        for s in series:
            label, xs, ys = s[:3]
            if (s[3] if len(s) > 3 else "line") == "points" or len(xs) == 1:
                ax.plot(xs, ys, "o", markersize=3, alpha=0.6, label=label)
            else:
                ax.plot(xs, ys, linewidth=2, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if xlim:
            ax.set_xlim(*xlim)
        if ylim:
            ax.set_ylim(*ylim)
        fig.legend(loc="outside lower center", ncols=min(3, len(series)), frameon=False)
        fig.savefig(path)
        plt.close(fig)


def patch_map(path, positions, values, titles, label, box_size):
    """One panel per row of values (k, P): each patch drawn at its mean-face position (P, 2) (the face box from
    0 to box_size, y down, with a margin), coloured and sized by its value, with one shared colour bar."""
    plt = _pyplot()
    import numpy as np
    values = np.asarray(values)
    lo, hi = float(values.min()), float(values.max())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(values), figsize=(3.4 * len(values), 3.9), layout="constrained")
        for ax, v, t in zip(np.atleast_1d(axes), values, titles):
            sc = ax.scatter(positions[:, 0], positions[:, 1], c=v, s=20 + 120 * (v - lo) / (hi - lo + 1e-12),
                            cmap="coolwarm", vmin=lo, vmax=hi)
            pad = 0.08 * box_size
            ax.set(title=t, xlim=(min(0, positions[:, 0].min()) - pad, max(box_size, positions[:, 0].max()) + pad),
                   ylim=(max(box_size, positions[:, 1].max()) + pad, min(0, positions[:, 1].min()) - pad),
                   aspect="equal", xticks=[], yticks=[])
            ax.grid(False)
        fig.colorbar(sc, ax=axes, label=label, shrink=0.8)
        fig.savefig(path)
        plt.close(fig)
