"""Write MNIST's 60,000 training images (no test images) to a Parquet file for validation.toml, so the tolerance is
checked on a validation split held out of the training set, never on the test set.

    python examples/paper/lenet_sparsity/prepare_validation.py [--out examples/paper/lenet_sparsity/data/mnist_train_only.parquet]
"""
import argparse
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "mnist_train_only.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import pandas as pd

    from fipgraph.data.vision import load_mnist

    a = load_mnist()
    n = a.x_train.shape[0]
    df = pd.DataFrame(a.x_train.reshape(n, -1).numpy(), columns=[f"p{i}" for i in range(784)])
    df["label"] = a.y_train.numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.out)
    print(f"wrote {n} training images to {args.out}")


if __name__ == "__main__":
    main()
