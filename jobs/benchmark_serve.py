"""Ray Serve endpoint under a bounded load on 127.0.0.1: p50/p99 latency and throughput with request batching on
and off, at 4 and 16 concurrent clients; every answer is checked against the pyfunc's output for its image.

    python jobs/benchmark_serve.py [--clients 4 16] [--requests 20] [--batch 8] [--model URI] [--out bench_out/serve]

Without ``--model`` the network is the demo job's with seeded random weights (see jobs/benchmark_predict.py).
Each client POSTs ``--requests`` images back to back (PNG bodies of synthetic syn_lip test images); one replica,
one CPU. "on" is ``max_batch_size=--batch`` with a 10 ms wait, "off" is ``max_batch_size=1``. A few warm-up
requests run before each measurement.
"""

from __future__ import annotations

import argparse
import io
import socket
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark_predict import DOMAIN, scratch_model, synthetic_images
from sstparse import tracking
from sstparse.serve import app, load
from sstparse.train.job import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--requests", type=int, default=20, help="Per client.")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_out/serve"))
    args = ap.parse_args()
    from ray import serve

    uri, store = (args.model, args.tracking_uri) if args.model else scratch_model(args.out)
    files = sorted(synthetic_images(args.out / "images", args.images).glob("*.jpg"))
    ims = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    bodies = []
    for im in ims:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        bodies.append(buf.getvalue())
    expected = tracking.load_pyfunc_model(uri, store).predict(ims, params={"domain": DOMAIN})
    connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url, rows = f"http://127.0.0.1:{port}/", []
    for mode, size in (("on", args.batch), ("off", 1)):
        serve.run(app({"model_uri": uri, "tracking_uri": store, "max_batch_size": size, "access_log": False}),
                  name="bench", route_prefix="/")
        load(url, bodies, 2, 4, {"domain": DOMAIN})  # warm-up
        for clients in args.clients:
            r = load(url, bodies, clients, args.requests, {"domain": DOMAIN})
            wrong = sum(not np.array_equal(np.asarray(Image.open(io.BytesIO(b))), expected[k % len(ims)])
                        for k, b in enumerate(r.bodies) if b)
            rows.append((mode, clients, r, wrong))
        serve.delete("bench")
    serve.shutdown()
    print(f"\n{args.requests} requests per client, {ims[0].shape[1]}x{ims[0].shape[0]} px, one replica\n"
          f"{'batching':<9} {'clients':>7} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>6} {'errors':>6} {'wrong':>5}")
    for mode, clients, r, wrong in rows:
        print(f"{mode:<9} {clients:7d} {1e3 * r.percentile(50):7.0f} {1e3 * r.percentile(99):7.0f} "
              f"{r.throughput:6.1f} {len(r.errors):6d} {wrong:5d}")
        for e in r.errors[:3]:
            print(f"          {e}")


if __name__ == "__main__":
    main()
