#!/usr/bin/env python3
"""How often class-conditional Fashion-MNIST samples show the class they were drawn for.

A small CNN is trained on the Fashion-MNIST training images (IDX files, as Debian's
dataset-fashion-mnist installs them) and cached; it then classifies each `difftrain sample` .npz
(arr_0 uint8 [N, 28, 28, 1] images, arr_1 int64 [N] requested labels). The share of samples
classified as their requested label is what classifier-free guidance should raise; the
classifier's accuracy on the test images bounds what the number can show.

    .venv/bin/python launch/guidance_accuracy.py runs/cfg/s1.npz runs/cfg/s3.npz \
        [--json OUT.json] [--cache runs/fashion_mnist_classifier.pt]
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return images, labels.astype(np.int64)


def to_input(images):
    """uint8 [N, 28, 28] or [N, 28, 28, 1] -> float [N, 1, 28, 28] in [0, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div(255)
    return x.reshape(x.shape[0], 1, 28, 28)


def make_classifier():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def predict(net, images, batch=1000):
    net.eval()
    with torch.no_grad():
        return torch.cat([net(to_input(images[i:i + batch])).argmax(1)
                          for i in range(0, len(images), batch)]).numpy()


def train_classifier(data_dir, epochs, limit, seed):
    images, labels = load_split(data_dir, "train")
    if limit:
        images, labels = images[:limit], labels[:limit]
    torch.manual_seed(seed)
    net = make_classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = to_input(images), torch.from_numpy(labels)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("samples", nargs="+", help="`difftrain sample` outputs (.npz with arr_1)")
    p.add_argument("--data", default=DATA, help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--cache", default="runs/fashion_mnist_classifier.pt",
                   help="the trained classifier's weights: read if present, else written")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    net = make_classifier()
    if os.path.exists(a.cache):
        net.load_state_dict(torch.load(a.cache))
    else:
        t0 = time.time()
        net = train_classifier(a.data, a.epochs, a.limit, a.seed)
        os.makedirs(os.path.dirname(a.cache) or ".", exist_ok=True)
        torch.save(net.state_dict(), a.cache + ".tmp")
        os.replace(a.cache + ".tmp", a.cache)
        print(f"trained the classifier in {time.time() - t0:.0f} s: {a.cache}", file=sys.stderr)
    test_images, test_labels = load_split(a.data, "test")
    result = {"classifier_test_accuracy": float((predict(net, test_images) == test_labels).mean()),
              "samples": []}
    print(f"classifier accuracy on the {len(test_labels)} test images: "
          f"{result['classifier_test_accuracy']:.3f}")
    for path in a.samples:
        with np.load(path) as z:
            if "arr_1" not in z:
                sys.exit(f"{path}: no arr_1 (labels): not samples of a class-conditional model")
            images, labels = z["arr_0"], z["arr_1"]
        if images.shape[1:3] != (28, 28) or images.shape[-1] != 1:
            sys.exit(f"{path}: images of shape {images.shape[1:]}, not 28x28x1 (Fashion-MNIST)")
        hits = predict(net, images) == labels
        result["samples"].append({"file": path, "num": int(len(labels)),
                                  "accuracy": float(hits.mean())})
        print(f"{path}: {hits.mean():.3f} of {len(labels)} samples classified as their class")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
