#!/usr/bin/env python3
"""Scaling beyond one machine, by a model fed with measured costs (issue 10).

Each lock cycle costs `leader_us` of CPU on the node that leads its group and `follower_us` on
each other replica (measured with `bench/profile.sh`: the leader's and the followers' CPU per
cycle, all groups together). Every node has one core of its own (`--cores`), groups are spread
evenly (placement gives every node the same number of leaderships), fsyncs run in parallel on
each node's own disk and are not CPU. The cluster's capacity is then the point where the
busiest node's core is full:

    X(N) = N * cores * 1e6 / (leader_us + (R - 1) * follower_us)   cycles/s

with R the replicas per group: today every node holds every group (R = N); with placement at a
fixed replication factor, R = 3. The Universal Scalability Law
X(N) = lambda*N / (1 + sigma*(N-1) + kappa*N*(N-1)) is fitted to both curves (least squares on
N/X, which is linear in 1, N-1 and N(N-1)), and an SVG plot is written.

    bench/scale_model.py [--leader-us 79.7] [--follower-us 30.7] [--cores 1] [--svg docs/scale-model.svg]
"""

import argparse

NODES = [3, 5, 7, 9, 15]


def capacity(n, replicas, leader_us, follower_us, cores):
    return n * cores * 1e6 / (leader_us + (replicas - 1) * follower_us)


def solve3(a, b):
    """Solves the 3x3 system a x = b (Gaussian elimination with partial pivoting)."""
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col and m[col][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    return [m[i][3] / m[i][i] for i in range(3)]


def fit_usl(ns, xs):
    """(lambda, sigma, kappa) minimising the squared error of N/X = (1 + s(N-1) + k N(N-1)) / l."""
    rows = [[1.0, n - 1.0, n * (n - 1.0)] for n in ns]
    ys = [n / x for n, x in zip(ns, xs)]
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys)) for i in range(3)]
    a0, a1, a2 = solve3(ata, aty)
    lam = 1.0 / a0
    return lam, a1 * lam, a2 * lam


def svg(curves, path):
    w, h, pad = 640, 400, 60
    xmax = max(NODES)
    ymax = max(max(v for _, v in pts) for _, pts, _ in curves) * 1.1
    sx = lambda n: pad + (w - 2 * pad) * n / xmax
    sy = lambda v: h - pad - (h - 2 * pad) * v / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">nodes (one core each)</text>',
           f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">lock cycles/s (model)</text>']
    for n in NODES:
        out.append(f'<text x="{sx(n)}" y="{h - pad + 15}" text-anchor="middle">{n}</text>')
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{pad - 5}" y="{sy(v) + 4}" text-anchor="end">{v / 1000:.0f}k</text>')
    for label, pts, color in curves:
        line = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        n, v = pts[-1]
        out.append(f'<text x="{sx(n) - 5}" y="{sy(v) - 8}" text-anchor="end" fill="{color}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leader-us", type=float, default=79.7)
    p.add_argument("--follower-us", type=float, default=30.7)
    p.add_argument("--cores", type=float, default=1.0)
    p.add_argument("--svg")
    a = p.parse_args()
    curves = []
    print("| layout | " + " | ".join(f"{n} nodes" for n in NODES) + " | sigma | kappa |")
    print("|---|" + "---|" * len(NODES) + "---|---|")
    for label, replicas, color in [("every node holds every group (today)", None, "#c0392b"),
                                   ("3 replicas per group (placement)", 3, "#2471a3")]:
        xs = [capacity(n, replicas or n, a.leader_us, a.follower_us, a.cores) for n in NODES]
        lam, sigma, kappa = fit_usl(NODES, xs)
        cells = " | ".join(f"{x:,.0f}" for x in xs)
        print(f"| {label} | {cells} | {sigma:.2e} | {kappa:.2e} |")
        curves.append((label, list(zip(NODES, xs)), color))
    if a.svg:
        svg(curves, a.svg)


if __name__ == "__main__":
    main()
