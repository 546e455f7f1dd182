"""The PyTorch side of tests/quality: FID as pytorch-fid computes it, in eager PyTorch and NumPy.

The network is pytorch-fid's FID Inception (torchvision's Inception3 with FIDInceptionA, C, E_1
and E_2 patched in), written out here without torchvision, which has no wheel for this torch;
its module names are torchvision's, so a state dict written here has the keys of
pt_inception-2015-12-05-6726825d.pth. The Frechet distance takes NumPy's eigenvalues of
sigma1 @ sigma2 (non-symmetric), not difftrain's route through a symmetric matrix.

  write-weights OUT.pt SEED      random weights (BatchNorm statistics included), with the
                                 file's fc head and num_batches_tracked counters
  features WEIGHTS IMAGES.npz    JSON: the pool3 and spatial features of arr_0 (uint8 [n, H, W, C])
  fid WEIGHTS A.npz B.npz        JSON: mu, sigma (NumPy), the FID and the sFID of two sets of
                                 images
  inception-score WEIGHTS IMAGES.npz SPLITS
                                 JSON: the Inception Score as improved-gan's inception_score/model.py
                                 computes it from the softmax of pool3 · fc.weight (no bias)
  precision-recall WEIGHTS A.npz B.npz K
                                 JSON: precision (A in B's manifold) and recall (B in A's) as
                                 guided-diffusion's ManifoldEstimator computes them, in float64
                                 (it takes its distances in float16), and the margin: how far
                                 the query nearest to the other answer is from it, relative to
                                 the largest radius
  time WEIGHTS A.npz B.npz BATCH THREADS [DEVICE]
                                 JSON: seconds for both sets' features in batches and their
                                 statistics (pool3 and spatial, as guided-diffusion's evaluator),
                                 with the network loaded (bench/run.py's baseline)

sFID's spatial features are guided-diffusion's evaluator's: TensorFlow's mixed_6/conv[..., :7]
(17 x 17 x 7, NHWC) flattened; here mixed_6/conv is Mixed_6d's branch1x1, run on its own.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool_without_padding(x):  # pytorch-fid's patch of A, C and E_1
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_without_padding(x))
        return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        bp = self.branch_pool(avg_pool_without_padding(x))
        return torch.cat([self.branch1x1(x), b7, d, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool  # FIDInceptionE_2's patch
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = avg_pool_without_padding(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FidInception(nn.Module):
    """fid_inception_v3(): Inception3(num_classes=1008, aux_logits=False), patched."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def pool3_and_spatial(self, inp):
        """pytorch_fid.inception.InceptionV3([3]) on images in [0, 1], and sFID's features."""
        x = F.interpolate(inp, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"]:
            if name == "6d":  # mixed_6/conv[..., :7], NHWC
                spatial = self.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).flatten(1)
            x = getattr(self, "Mixed_" + name)(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1), spatial


def random_network(seed):
    torch.manual_seed(seed)
    net = FidInception()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.Linear):
                # Logits of a few units, so that p(y|x) is far from uniform and the Inception
                # Score far from 1; a large bias, which the score must leave out.
                m.weight.normal_(0, 0.05)
                m.bias.normal_(0, 2.0)
    return net.eval()


def load(path):
    net = FidInception()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def features(net, images_npz, batch=None, device="cpu", spatial=False):
    """fid_score.get_activations: ToTensor (uint8 / 255, grayscale repeated as convert('RGB')).
    The pool3 features, or (pool3, spatial) with spatial=True."""
    images = np.load(images_npz)["arr_0"]
    if images.ndim == 3:
        images = images[..., None]
    batch = batch or len(images)
    pool3, spatial_out = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).to(device).permute(0, 3, 1, 2).float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        with torch.no_grad():
            p, s = net.pool3_and_spatial(x)
        pool3.append(p.double().cpu().numpy())
        spatial_out.append(s.double().cpu().numpy())
    if spatial:
        return np.concatenate(pool3), np.concatenate(spatial_out)
    return np.concatenate(pool3)


def inception_score(net, pool3, splits):
    """improved-gan's get_inception_score: logits = pool3 · W (the 'softmax/logits/MatMul' input)."""
    logits = pool3 @ net.fc.weight.detach().double().numpy().T
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "splits": [float(x) for x in scores]}


def precision_recall(samples, references, k):
    """guided-diffusion's evaluator: ManifoldEstimator.manifold_radii and evaluate_pr."""
    def distances(u, v):  # _batch_pairwise_distances
        d = (u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None, :]
        return np.maximum(d, 0.0)

    def radii(f):  # column k of the partition over the row, the row's own distance included
        return np.partition(distances(f, f), np.arange(k + 1), axis=1)[:, k]

    r_samples, r_references = radii(samples), radii(references)
    d = distances(samples, references)
    samples_in = (d <= r_references[None, :]).any(1)
    references_in = (d <= r_samples[:, None]).any(0)
    # A query is inside where its deepest ball has r - d >= 0: how far each is from the other
    # answer, relative to the largest radius.
    depth_samples = (r_references[None, :] - d).max(1) / r_references.max()
    depth_references = (r_samples[:, None] - d).max(0) / r_samples.max()
    margin = min(np.abs(depth_samples).min(), np.abs(depth_references).min())
    return {"precision": float(samples_in.mean()), "recall": float(references_in.mean()),
            "margin": float(margin)}


def frechet_distance(mu1, sigma1, mu2, sigma2):
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def main():
    command = sys.argv[1]
    if command == "write-weights":
        torch.save(random_network(int(sys.argv[3])).state_dict(), sys.argv[2])
        print(json.dumps({"tensors": len(random_network(0).state_dict())}))
    elif command == "features":
        pool3, spatial = features(load(sys.argv[2]), sys.argv[3], spatial=True)
        print(json.dumps({"pool3": pool3.tolist(), "spatial": spatial.tolist()}))
    elif command == "fid":
        net = load(sys.argv[2])
        stats, spatial_stats = [], []
        for path in sys.argv[3:5]:
            f, s = features(net, path, spatial=True)
            stats.append((f.mean(0), np.cov(f, rowvar=False)))
            spatial_stats.append((s.mean(0), np.cov(s, rowvar=False)))
        print(json.dumps({"fid": frechet_distance(*stats[0], *stats[1]),
                          "sfid": frechet_distance(*spatial_stats[0], *spatial_stats[1]),
                          "mu": [s[0].tolist() for s in stats],
                          "sigma_trace": [float(np.trace(s[1])) for s in stats],
                          "mu_s": [s[0].tolist() for s in spatial_stats]}))
    elif command == "inception-score":
        net = load(sys.argv[2])
        print(json.dumps(inception_score(net, features(net, sys.argv[3]), int(sys.argv[4]))))
    elif command == "precision-recall":
        net = load(sys.argv[2])
        a, b = features(net, sys.argv[3]), features(net, sys.argv[4])
        print(json.dumps(precision_recall(a, b, int(sys.argv[5]))))
    elif command == "time":
        torch.set_num_threads(int(sys.argv[6]))
        device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
        net = load(sys.argv[2]).to(device)
        start = time.perf_counter()
        count = 0
        for path in sys.argv[3:5]:
            for f in features(net, path, int(sys.argv[5]), device, spatial=True):
                f.mean(0), np.cov(f, rowvar=False)
            count += len(f)
        print(json.dumps({"seconds": time.perf_counter() - start, "images": count}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
