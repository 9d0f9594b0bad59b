"""Remote backend overhead and batch concurrency, against the test suite's fake vLLM-Omni server with a fixed
answer latency (a stand-in for generation time; no GPU, no model). Prints wall time per batch for several
max_concurrent_requests values, so the gain from sending a batch side by side can be seen on any machine.

    python bench/bench_remote.py [--images 8] [--latency 0.5] [--size 512]
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "remote")]

from bagel_model.remote import RemoteBagelClient  # noqa: E402
from fake_vllm_omni import FakeVllmOmni  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the fake server takes per image")
    parser.add_argument("--size", type=int, default=512, help="image side (PNG encode/decode cost is real)")
    args = parser.parse_args()
    with FakeVllmOmni() as fake:
        jobs = [dict(prompt="a fox", width=args.size, height=args.size, steps=10, seed=k) for k in range(args.images)]
        RemoteBagelClient(fake.url).run_concurrently("generate_image", jobs[:1])  # warm-up
        fake.latency = 0.0
        start = time.perf_counter()
        RemoteBagelClient(fake.url, max_concurrent_requests=1).run_concurrently("generate_image", jobs)
        overhead = (time.perf_counter() - start) / args.images
        print(f"client+fake overhead per {args.size}² image (no latency): {overhead * 1000:.1f} ms")
        fake.latency = args.latency
        for limit in (1, 2, 4, 8):
            start = time.perf_counter()
            RemoteBagelClient(fake.url, max_concurrent_requests=limit).run_concurrently("generate_image", jobs)
            wall = time.perf_counter() - start
            serial = args.images * args.latency
            print(f"max_concurrent_requests={limit}: {args.images} images in {wall:.2f} s ({serial / wall:.2f}x "
                  f"faster than {serial:.1f} s of latency one at a time), at most {fake.max_in_flight} in flight")
            fake.max_in_flight = 0


if __name__ == "__main__":
    main()
