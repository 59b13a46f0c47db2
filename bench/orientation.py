"""Which way round: good strips refused as turned, and turned strips read, on the whole simulated world.

A strip whose pads sit near its middle (acr-2: 0.5 mm off centre) shows which end is which only by
its pads' colours, and under lights and sensors that part the reagents' dyes from the card's inks
those colours can look alike either way. This renders N good and N turned-round strips of each
product from `simulator.world` (seeds of their own, never trained on; photos kept in
bench/results/world-photos/), reads them as `stripread read` does and counts:

- good strips refused `strip_reversed` (the reader saying a right-way strip is turned), and
- turned strips read (the reader missing it), and what else either was refused as.

    python bench/orientation.py [--strips 300] [--jobs 2] [--products acr-2,generic-10]

Figures go to bench/results/orientation.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from report import RESULTS, write_results

SEEDS = {None: 920_000_000, "reversed": 930_000_000}   # apart from generalization.py's 7001xxxxx


def measure(product: str, strips: int, jobs: int) -> dict:
    from models.dataset import world_rows
    photos = RESULTS / "world-photos"
    photos.mkdir(parents=True, exist_ok=True)
    codes = {}
    for fault, base in SEEDS.items():
        rows = world_rows(product, "card-v1", range(base, base + strips), fault=fault, jobs=jobs, photos=photos)
        codes[fault or "good"] = Counter(r.refusal or "read" for r in rows)
    good, turned = codes["good"], codes["reversed"]
    return {"strips": strips,
            "good_refused_as_turned": good["strip_reversed"] / strips,
            "turned_read": turned["read"] / strips,
            "good": dict(good), "turned": dict(turned)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strips", type=int, default=300, help="good and turned strips per product")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--products", default="acr-2,generic-10")
    args = parser.parse_args(argv)
    start = time.time()
    report = {}
    for product in args.products.split(","):
        r = report[product] = measure(product, args.strips, args.jobs)
        print(f"{product}: good strips refused as turned {r['good_refused_as_turned']:.3f}, turned strips read "
              f"{r['turned_read']:.3f} ({args.strips} each)\n  good: {r['good']}\n  turned: {r['turned']}")
    write_results("orientation", args, start, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
