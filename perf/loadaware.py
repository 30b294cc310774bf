#!/usr/bin/env python3
"""Bars for perf/loadaware.sh's CSV, as an SVG (no plotting library needed): call-id against
least-work, for the slow server (its share of new dialogs, mean setup) and the overloaded pool
(calls completed, refused, BYEs failed).

    perf/loadaware.py perf/loadaware.csv perf/loadaware.svg
"""
import csv
import sys

src, out = sys.argv[1], sys.argv[2]
rows = {(r[1], r[2]): r for r in csv.reader(open(src)) if len(r) >= 10}
modes = ("call-id", "least-work")
colors = {"call-id": "#2166ac", "least-work": "#1b7837"}


def num(v):
    try:
        return float(v)
    except ValueError:
        return 0.0


panels = []
slow = [rows.get(("slow", m)) for m in modes]
if all(slow):
    panels.append(("slow server (b0 answers 600 ms late)", [
        ("b0 share of new dialogs, %", [100 * num(r[5]) / max(num(r[6]), 1) for r in slow]),
        ("mean setup, ms", [num(r[7]) for r in slow]),
    ]))
cap = [rows.get(("capacity", m)) for m in modes]
if all(cap):
    panels.append(("pool offered 2x its capacity (3000 calls)", [
        ("calls completed", [num(r[3]) for r in cap]),
        ("calls refused", [num(r[4]) for r in cap]),
        ("BYEs failed", [num(r[5]) for r in cap]),
    ]))

W, PH, L = 720, 230, 20
H = 40 + PH * len(panels)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{L}" y="22" font-size="14">siplb --balance call-id vs least-work ({next(iter(rows.values()))[0] if rows else ""})</text>']
for i, m in enumerate(modes):
    svg.append(f'<rect x="{W - 230 + i * 110}" y="10" width="12" height="12" fill="{colors[m]}"/>'
               f'<text x="{W - 214 + i * 110}" y="21">{m}</text>')
for p, (title, groups) in enumerate(panels):
    top = 40 + p * PH
    svg.append(f'<text x="{L}" y="{top + 16}" font-size="13">{title}</text>')
    gw = (W - 2 * L) / len(groups)
    for g, (label, values) in enumerate(groups):
        x0 = L + g * gw + 20
        peak = max(values) or 1
        base = top + PH - 40
        for k, v in enumerate(values):
            h = (PH - 90) * v / peak
            x = x0 + k * 50
            svg.append(f'<rect x="{x}" y="{base - h:.1f}" width="40" height="{h:.1f}" fill="{colors[modes[k]]}"/>')
            svg.append(f'<text x="{x + 20}" y="{base - h - 4:.1f}" text-anchor="middle">{v:.0f}</text>')
        svg.append(f'<text x="{x0}" y="{base + 18}">{label}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
