"""The script a careful user writes by hand for Split Fashion-MNIST with naive fine-tuning: no framework.

Reads the Debian package's IDX files, splits the 10 classes into 5 experiences of 2, trains an MLP 2x400
(SGD lr 0.01, batch 32, 1 epoch per experience), evaluates every test set before training and after each
experience, and writes the matrix to results.json. The contender of `bench/process_overhead.py`: the same
job as `lifelong run bench/configs/split_fmnist_naive.yaml`, as a whole process (imports, data, training,
evaluation, output).

    python bench/handwritten/split_fmnist_naive.py OUT_DIR
"""

import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FOLDER = Path("/usr/share/datasets/fashion-mnist")


def read_images(name: str) -> torch.Tensor:
    with gzip.open(FOLDER / name) as f:
        data = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(data.copy()).view(-1, 1, 28, 28).float().div_(255.0)


def read_labels(name: str) -> torch.Tensor:
    with gzip.open(FOLDER / name) as f:
        return torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64))


def main() -> None:
    out = Path(sys.argv[1])
    began = time.perf_counter()
    train_x, train_y = read_images("train-images-idx3-ubyte.gz"), read_labels("train-labels-idx1-ubyte.gz")
    test_x, test_y = read_images("t10k-images-idx3-ubyte.gz"), read_labels("t10k-labels-idx1-ubyte.gz")
    tasks = [(2 * i, 2 * i + 1) for i in range(5)]
    splits = []
    for classes in tasks:
        tr, te = torch.isin(train_y, torch.tensor(classes)), torch.isin(test_y, torch.tensor(classes))
        splits.append((train_x[tr], train_y[tr], test_x[te], test_y[te]))

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )

    @torch.no_grad()
    def evaluate() -> list[float]:
        model.eval()
        row = [float((model(x).argmax(1) == y).float().mean()) for _, _, x, y in splits]
        model.train()
        return row

    initial = evaluate()
    matrix = []
    generator = torch.Generator().manual_seed(0)
    for i, (x, y, _, _) in enumerate(splits):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        order = torch.randperm(len(x), generator=generator)
        for b in range(0, len(x), 32):
            idx = order[b : b + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        matrix.append(evaluate())
        print(f"after experience {i + 1}: {[round(v, 3) for v in matrix[-1]]}")
    out.mkdir(parents=True, exist_ok=True)
    acc = sum(matrix[-1]) / len(matrix[-1])
    results = {"matrix": matrix, "initial": initial, "acc": acc, "wall_seconds": time.perf_counter() - began}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    torch.save(model.state_dict(), out / "model.pt")
    print(f"ACC {100 * acc:.1f}")


if __name__ == "__main__":
    main()
