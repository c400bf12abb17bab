"""How long ``loraserve validate`` takes on large configs (issue 20's 50 MB inputs).

``python benchmarks/input_scale.py [--mb 50]`` writes three inputs of about that size: a
config padded with comments, a config with that many bytes of adapters, and a small config
whose ``adapters_csv`` holds that many bytes of adapters; it times ``loraserve validate`` on
each in a fresh process (imports included), printing one line per file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _comments(mb: float) -> str:
    line = "# " + "x" * 97 + "\n"
    return line * int(mb * 1e6 / len(line)) + QUICKSTART.read_text(encoding="utf-8")


def _adapters(mb: float) -> str:
    raw = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    raw["adapters"] = []
    raw.pop("adapters_csv", None)
    head = yaml.safe_dump(raw, sort_keys=False).replace("adapters: []\n", "")
    row = "- {{id: adapter-{i:07d}, rank: {rank}, request_rate: 0.01}}\n"
    count = int(mb * 1e6 / len(row.format(i=0, rank=16)))
    ranks = (8, 16, 32, 64)
    return head + "adapters:\n" + "".join(row.format(i=i, rank=ranks[i % 4])
                                           for i in range(count))


def _adapters_csv(mb: float, folder: Path) -> str:
    raw = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    raw.pop("adapters", None)
    raw["adapters_csv"] = "adapters.csv"
    row = "adapter-{i:07d},{rank},0.01\n"
    count = int(mb * 1e6 / len(row.format(i=0, rank=16)))
    ranks = (8, 16, 32, 64)
    (folder / "adapters.csv").write_text(
        "id,rank,request_rate\n" + "".join(row.format(i=i, rank=ranks[i % 4])
                                          for i in range(count)), encoding="utf-8")
    return yaml.safe_dump(raw, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of each file (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        makers = {"comments": _comments, "adapters": _adapters,
                  "csv": lambda mb: _adapters_csv(mb, Path(folder))}
        for name, make in makers.items():
            path = Path(folder) / f"{name}.yaml"
            path.write_text(make(args.mb), encoding="utf-8")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "loraserve.cli", "validate", str(path)],
                                  capture_output=True, text=True, cwd=ROOT, check=False)
            seconds = time.perf_counter() - started
            said = (done.stdout or done.stderr).strip().splitlines()[-1]
            size = path.stat().st_size + sum(p.stat().st_size for p in Path(folder).glob("*.csv"))
            print(f"{name:<9} {size / 1e6:6.1f} MB  exit {done.returncode}  "
                  f"{seconds:6.1f} s  {said.replace(str(path), path.name)[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
