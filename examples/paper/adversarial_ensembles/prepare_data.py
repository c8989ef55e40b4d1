"""Fashion-MNIST with the first 2,000 official test images only, for this experiment's per-node test evaluation
(every saved node costs 2,000 forward passes, not 10,000): the official training files are linked, the test files
truncated. The configs read the folder as ``[data] kwargs = { folder = ... }`` (relative to the repo root).

    sudo apt-get install -y dataset-fashion-mnist
    python examples/paper/adversarial_ensembles/prepare_data.py [--n 2000]
"""
import argparse
import gzip
import struct
from pathlib import Path

SRC = Path("/usr/share/datasets/fashion-mnist")  # the Debian package dataset-fashion-mnist
OUT = Path(__file__).resolve().parent / "data" / "fmnist_2k"


def truncate(src: Path, dst: Path, n: int) -> None:
    """Keep the first n items of an idx file (images: header of 4 ints, labels: 2)."""
    d = gzip.open(src).read()
    if "images" in src.name:
        magic, _, rows, cols = struct.unpack(">IIII", d[:16])
        body = struct.pack(">IIII", magic, n, rows, cols) + d[16:16 + n * rows * cols]
    else:
        magic, _ = struct.unpack(">II", d[:8])
        body = struct.pack(">II", magic, n) + d[8:8 + n]
    with gzip.open(dst, "wb") as f:
        f.write(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="official test images to keep (the first n)")
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (args.src / "t10k-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found in {args.src}; install it with: sudo apt-get install -y dataset-fashion-mnist")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        link = args.out / name
        link.unlink(missing_ok=True)
        link.symlink_to(args.src / name)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        truncate(args.src / name, args.out / name, args.n)
    print(f"wrote {args.out} (official training set, first {args.n} test images)")


if __name__ == "__main__":
    main()
