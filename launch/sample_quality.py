#!/usr/bin/env python3
"""Sample quality on Fashion-MNIST: class agreement and a Frechet distance in a classifier's features.

A small CNN is trained on the Fashion-MNIST training images (IDX files, as Debian's
dataset-fashion-mnist installs them) and cached. For each `difftrain sample` .npz (arr_0 uint8
[N, 28, 28, 1] images; arr_1 int64 [N] requested labels for class-conditional models) it reports:

- fd: the Frechet distance between the Gaussians fitted to the CNN's 128 penultimate features of
  the samples and of the 10,000 test images: FID's formula in this classifier's feature space,
  not FID (no Inception network). It is biased upwards for small N, so compare files of equal N;
  `fd_real` is what N training images score, the floor for that N.
- precision and recall (Kynkaenniemi et al. 2019, k = 3): the share of samples inside the
  k-nearest-neighbour balls of as many test images (fidelity), and the share of those test images
  inside the samples' balls (variety), in the same features; `precision_real` and `recall_real`
  are what as many training images score.
- accuracy (files with labels): the share of samples classified as their requested label, what
  classifier-free guidance should raise; the classifier's test accuracy bounds what it can show.

    .venv/bin/python launch/sample_quality.py runs/cfg/s1.npz runs/cfg/s3.npz \
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


def features(net, images, batch=1000):
    """The 128 activations before the last layer, float64 [N, 128]."""
    net.eval()
    body = net[:-1]
    with torch.no_grad():
        return torch.cat([body(to_input(images[i:i + batch]))
                          for i in range(0, len(images), batch)]).double().numpy()


def gaussian(f):
    return f.mean(0), np.cov(f, rowvar=False)


def knn_radii(f, k=3):
    """Distance of each point to its k-th nearest neighbour among the others."""
    d = torch.cdist(torch.from_numpy(f), torch.from_numpy(f))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # the first is the point itself


def coverage(points, centres, radii):
    """Share of `points` inside at least one ball (centre, radius)."""
    d = torch.cdist(torch.from_numpy(points), torch.from_numpy(centres)).numpy()
    return float((d <= radii[None, :]).any(1).mean())


def precision_recall(samples, real, k=3):
    return (coverage(samples, real, knn_radii(real, k)),
            coverage(real, samples, knn_radii(samples, k)))


def frechet_distance(a, b):
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the trace of the root from the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric (no complex sqrtm needed)."""
    (mu_a, s_a), (mu_b, s_b) = a, b
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


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
    p.add_argument("samples", nargs="+", help="`difftrain sample` outputs (.npz)")
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
    train_images, _ = load_split(a.data, "train")
    test_features = features(net, test_images)
    test_gaussian = gaussian(test_features)
    result = {"classifier_test_accuracy": float((predict(net, test_images) == test_labels).mean()),
              "samples": []}
    print(f"classifier accuracy on the {len(test_labels)} test images: "
          f"{result['classifier_test_accuracy']:.3f}")
    real = {}  # N -> what the first N training images score: FD, precision, recall
    for path in a.samples:
        with np.load(path) as z:
            images = z["arr_0"]
            labels = z["arr_1"] if "arr_1" in z else None
        if images.shape[1:] != (28, 28, 1):
            sys.exit(f"{path}: images of shape {images.shape[1:]}, not 28x28x1 (Fashion-MNIST)")
        n = len(images)
        if not 4 < n <= len(test_images):
            sys.exit(f"{path}: {n} images: the measures need 5 to {len(test_images)}")

        def scores(f):
            precision, recall = precision_recall(f, test_features[:n])
            return frechet_distance(gaussian(f), test_gaussian), precision, recall

        if n not in real:
            real[n] = scores(features(net, train_images[:n]))
        fd, precision, recall = scores(features(net, images))
        row = {"file": path, "num": int(n), "fd": fd, "precision": precision, "recall": recall,
               "fd_real": real[n][0], "precision_real": real[n][1], "recall_real": real[n][2]}
        line = (f"{path}: FD {fd:.2f}, precision {precision:.3f}, recall {recall:.3f} (real "
                f"images: {real[n][0]:.2f}, {real[n][1]:.3f}, {real[n][2]:.3f})")
        if labels is not None:
            row["accuracy"] = float((predict(net, images) == labels).mean())
            line += f", {row['accuracy']:.3f} of {n} samples classified as their class"
        result["samples"].append(row)
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
