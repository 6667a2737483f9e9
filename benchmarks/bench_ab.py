"""Time an encoder forward (language-perceiver, B=1, M=2048) of any npperceiver checkout: an A/B of two versions.

Each run imports npperceiver from the checkout given, in a process of its own, so two versions never share a
process (or a cache); run it for the old and the new checkout in turn, a few rounds, and compare the minima::

    git worktree add /tmp/v010 6b3bed5    # the last commit of 0.1.0
    for round in 1 2 3; do
        python benchmarks/bench_ab.py /tmp/v010 --threads 1 --repeats 5
        python benchmarks/bench_ab.py .        --threads 1 --repeats 5
    done

Prints the checkout, the thread count, and the minimum and median of the timed runs in milliseconds (one
untimed run first). docs/performance.md ("The cost of reading as the math") used it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: "list[str] | None" = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="a folder holding the npperceiver package to time")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads, set with threadpoolctl (default: 1); without it, numpy's own number")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (default: 5)")
    p.add_argument("--inputs", type=int, default=2048, help="M, the number of inputs (default: 2048)")
    p.add_argument("--preset", default="language-perceiver", help="the encoder (default: language-perceiver)")
    args = p.parse_args(argv)
    checkout = os.path.abspath(args.checkout)
    sys.path.insert(0, checkout)
    import contextlib

    import numpy as np

    import npperceiver as npp

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without it, set OPENBLAS_NUM_THREADS before the run instead
        def threadpool_limits(threads: int) -> contextlib.nullcontext:
            return contextlib.nullcontext()

        args.threads = "default"

    if not os.path.abspath(npp.__file__).startswith(checkout):
        raise SystemExit(f"npperceiver was imported from {npp.__file__}, not from {checkout}")
    preset = npp.load_preset(args.preset)
    fields = preset.to_dict() if hasattr(preset, "to_dict") else dict(preset)
    config = npp.PerceiverConfig.from_dict(
        {k: v for k, v in fields.items() if k in npp.PerceiverConfig.__dataclass_fields__})
    model = npp.PerceiverModel.init(config, seed=0)
    x = np.random.default_rng(0).standard_normal((1, args.inputs, config.d_model)).astype(np.float32)
    with threadpool_limits(args.threads):
        model(x)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    line = (f"{checkout} {args.preset} threads={args.threads} M={args.inputs} min={min(times) * 1e3:.1f} ms "
            f"median={statistics.median(times) * 1e3:.1f} ms")
    print(line)
    return line


if __name__ == "__main__":
    main()
