"""``make bench``: run every benchmark in turn; each writes bench/results/<name>.json and .md.

Each bench runs in its own process so that one's memory and threads do not skew the next.
bench/train_parity.py is not among them: it trains two 4-epoch learning-curve arms (≈ 1 h on two
cores); run it on its own (README, "Training and extraction dtype").
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = (
    "bench.extract_bench",
    "bench.extract_fidelity",
    "bench.align_bench",
    "bench.distill_bench",
    "bench.eval_bench",
    "bench.train_speed",
)


def main() -> int:
    failed = []
    for module in BENCHES:
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *sys.argv[1:]]).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
