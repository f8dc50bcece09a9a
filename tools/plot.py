"""Minimal line charts with Pillow (no plotting library needed): axes, ticks, several named series."""
from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def line_chart(path, series, title="", xlabel="", ylabel="", size=(640, 460), xlim=None, ylim=None):
    """series: list of (label, xs, ys[, style]) with style "line" (default) or "points". Writes a PNG."""
    W, H = size
    left, right, top, bottom = 70, 20, 40, 60
    xs_all = [x for s in series for x in s[1]]
    ys_all = [y for s in series for y in s[2]]
    x0, x1 = xlim or (min(xs_all), max(xs_all))
    y0, y1 = ylim or (min(ys_all), max(ys_all))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    px = lambda x: left + (x - x0) / (x1 - x0) * (W - left - right)      # noqa: E731
    py = lambda y: H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(6):
        xv, yv = x0 + (x1 - x0) * k / 5, y0 + (y1 - y0) * k / 5
        d.line([px(xv), H - bottom, px(xv), H - bottom + 5], fill="black")
        d.text((px(xv) - 15, H - bottom + 8), f"{xv:.3g}", fill="black")
        d.line([left - 5, py(yv), left, py(yv)], fill="black")
        d.text((5, py(yv) - 6), f"{yv:.3g}", fill="black")
        d.line([left, py(yv), W - right, py(yv)], fill=(230, 230, 230))
    d.text((W / 2 - 4 * len(title), 10), title, fill="black")
    d.text((W / 2 - 3 * len(xlabel), H - 25), xlabel, fill="black")
    d.text((5, top - 25), ylabel, fill="black")
    for k, s in enumerate(series):
        label, xs, ys = s[:3]
        style = s[3] if len(s) > 3 else "line"
        col = COLOURS[k % len(COLOURS)]
        pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if style == "points" or len(pts) == 1:
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        else:
            d.line(pts, fill=col, width=2)
        d.text((left + 10, top + 8 + 14 * k), "- " + label, fill=col)
    im.save(path)
