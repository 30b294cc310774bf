#!/usr/bin/env python3
"""One line per proxy against the offered call rate, as an SVG (no plotting library needed), from
the CSV perf/compare.sh --csv and perf/capacity.sh write (latest date in the file only).

    perf/plot.py perf/results.csv perf/cpu-per-call.svg    CPU s per 1000 calls, modes sweep/persistent
    perf/plot.py perf/capacity.csv perf/capacity.svg capacity    calls/s carried, mode capacity
"""
import csv
import sys
from collections import defaultdict

src, out = sys.argv[1], sys.argv[2]
capacity = len(sys.argv) > 3 and sys.argv[3] == "capacity"
modes = ("capacity",) if capacity else ("sweep", "persistent")
title = "calls/s carried on one core" if capacity else "CPU seconds per 1000 calls"
rows = [r for r in csv.reader(open(src)) if len(r) >= 10]
latest = max(r[0] for r in rows)
series = defaultdict(dict)
for date, proxy, mode, rate, _ok, _failed, cps, _p50, _p99, cpu in (r[:10] for r in rows):
    if date == latest and mode in modes and proxy != "direct":
        series[proxy][float(rate)] = float(cps or 0) if capacity else float(cpu)
W, H, L, B, T, R = 640, 400, 70, 50, 40, 150
rates = sorted({x for s in series.values() for x in s})
top = max(v for s in series.values() for v in s.values()) * 1.1 or 1
x = lambda r: L + (W - L - R) * (rates.index(r) / max(len(rates) - 1, 1))
y = lambda v: H - B - (H - B - T) * v / top
colors = {"siplb": "#1b7837", "haproxy": "#2166ac", "kamailio": "#b2182b"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2 - 60}" y="20" font-size="14">{title} ({latest})</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{(W-R+L)/2 - 70}" y="{H-10}">calls per second offered (persistent TLS)</text>']
for i in range(5):
    v = top * i / 4
    svg.append(f'<text x="{L-8}" y="{y(v)+4}" text-anchor="end">{v:.0f}</text>' if capacity
               else f'<text x="{L-8}" y="{y(v)+4}" text-anchor="end">{v:.2f}</text>')
    svg.append(f'<line x1="{L}" y1="{y(v)}" x2="{W-R}" y2="{y(v)}" stroke="#ddd"/>')
for r in rates:
    svg.append(f'<text x="{x(r)}" y="{H-B+16}" text-anchor="middle">{int(r)}</text>')
for i, (proxy, pts) in enumerate(sorted(series.items())):
    c = colors.get(proxy, "#555")
    path = " ".join(f"{x(r)},{y(v)}" for r, v in sorted(pts.items()))
    svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
    for r, v in pts.items():
        svg.append(f'<circle cx="{x(r)}" cy="{y(v)}" r="3" fill="{c}"/>')
    svg.append(f'<text x="{W-R+10}" y="{T+20+18*i}" fill="{c}">{proxy}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg))
print(f"wrote {out}")
