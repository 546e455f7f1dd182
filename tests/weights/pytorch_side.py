"""The Python side of the weights tests (test_export_import.cpp): what a PyTorch user does with
the files of `difftrain export`, using bench/baseline's eager copy of improved-diffusion's
UNetModel (the same module names). Each command prints one line of JSON for the C++ test.

  pytorch_side.py forward EXPORT.json WEIGHTS TEST_BATCH [EXPORT.json WEIGHTS TEST_BATCH ...]
      For each triple: builds the UNet EXPORT.json describes, loads WEIGHTS into it with
      load_state_dict(strict=True) (a .pt through torch.load(weights_only=True), a .safetensors
      through the safetensors package), runs the test batch's x, t (and y, low_res) and reports the
      largest difference from its "out" (a list, one entry per triple).
  pytorch_side.py compare-safetensors FILE.safetensors FILE.pt
      Reads the first with the safetensors package, the second with torch.load, and reports
      whether they hold the same names, dtypes, shapes and bits, and the safetensors metadata.
  pytorch_side.py write-state-dict EXPORT.json SEED OUT_FP32.pt OUT_FP16.pt [OUT_LEGACY.pt]
      Saves the UNet EXPORT.json describes, with random weights (none zero), as improved-diffusion
      saves a model: torch.save(model.state_dict()), an OrderedDict with _metadata; once in
      float32 and once in float16; and in float32 in the legacy (pre-1.6) format.
  pytorch_side.py write-classifier CLASSIFIER.json SEED OUT.pt BATCH.pt
      Builds bench/baseline's EncoderUNetModel (guided-diffusion's noisy classifier) that
      CLASSIFIER.json describes, with random weights (none zero), saves its state dict as
      guided-diffusion saves a classifier, and saves {"x", "t", "out"}: a test batch and its
      logits.
  pytorch_side.py classifier-shapes CLASSIFIER.json
      The state-dict names and shapes of that EncoderUNetModel.
  pytorch_side.py model-shapes MODEL.json
      The state-dict names and shapes of the UNet (or SuperResModel) that MODEL.json, a difftrain
      export's "model" object, describes.
  pytorch_side.py write-shared-storage FILE.pt FILE.safetensors LEGACY.pt
      FILE.pt: torch.save({"view": base[1:, ::2], "base": base}) with base = arange(12) as a
      3 x 4 float32 matrix (two tensors of one storage, one at an offset with strides);
      FILE.safetensors: the safetensors package's save_file of base (float16) and of the int64
      arange(5); LEGACY.pt: the same two tensors and those two in the legacy (pre-1.6) format.
  pytorch_side.py write-bad-files DIR
      DIR/legacy_truncated.pt (the pre-1.6 format, its last storage cut short), DIR/list.pt (not a
      dict) and DIR/checkpoint.pt (a state dict inside a training checkpoint).
"""
import json
import os
import sys

import torch as th

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                                "baseline"))
from unet import EncoderUNetModel, model_from_difftrain  # noqa: E402


def build(export_json):
    with open(export_json) as f:
        return model_from_difftrain(json.load(f)["model"])


def load(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return th.load(path, weights_only=True)


def forward_one(export_json, weights, test_batch):
    model = build(export_json)
    state = load(weights)
    model.load_state_dict(state, strict=True)
    model.eval()
    batch = load(test_batch)
    with th.no_grad():
        conditions = {k: batch[k] for k in ("y", "low_res") if k in batch}
        out = model(batch["x"], batch["t"], **conditions)
    return {"max_abs_diff": (out - batch["out"]).abs().max().item(),
            "max_abs_out": out.abs().max().item(), "shape": list(out.shape),
            "tensors": len(state), "type": type(state).__name__}


def forward(*triples):
    return [forward_one(*triples[i:i + 3]) for i in range(0, len(triples), 3)]


def compare_safetensors(st_path, pt_path):
    from safetensors import safe_open
    with safe_open(st_path, framework="pt") as f:
        metadata = f.metadata()
        st = {k: f.get_tensor(k) for k in f.keys()}
    pt = th.load(pt_path, weights_only=True)
    same = st.keys() == pt.keys() and all(
        st[k].dtype == pt[k].dtype and st[k].shape == pt[k].shape and th.equal(st[k], pt[k])
        for k in st)
    return {"same": same, "tensors": len(st), "metadata": metadata}


def write_state_dict(export_json, seed, out_fp32, out_fp16, out_legacy=None):
    model = build(export_json)
    g = th.Generator().manual_seed(int(seed))
    with th.no_grad():
        for p in model.parameters():
            p.add_(0.05 * th.randn(p.shape, generator=g))
    state = model.state_dict()
    th.save(state, out_fp32)
    if out_legacy:
        th.save(state, out_legacy, _use_new_zipfile_serialization=False)
    th.save(model.half().state_dict(), out_fp16)
    return {"type": type(state).__name__, "metadata": hasattr(state, "_metadata"),
            "tensors": len(state)}


def write_classifier(classifier_json, seed, out_pt, batch_pt):
    with open(classifier_json) as f:
        c = json.load(f)
    model = EncoderUNetModel(**c)
    g = th.Generator().manual_seed(int(seed))
    with th.no_grad():
        for p in model.parameters():
            p.add_(0.05 * th.randn(p.shape, generator=g))
    th.save(model.state_dict(), out_pt)
    x = th.randn(3, c["in_channels"], c["image_size"], c["image_size"], generator=g)
    t = th.tensor([3.0, 250.0, 990.0])
    with th.no_grad():
        out = model(x, t)
    th.save({"x": x, "t": t, "out": out}, batch_pt)
    return {"tensors": len(model.state_dict()), "max_abs_out": out.abs().max().item()}


def classifier_shapes(classifier_json):
    with open(classifier_json) as f, th.device("meta"):  # shapes only: allocate nothing
        model = EncoderUNetModel(**json.load(f))
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def model_shapes(model_json):
    with open(model_json) as f, th.device("meta"):
        model = model_from_difftrain(json.load(f))
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def write_shared_storage(pt_path, st_path, legacy_path):
    from safetensors.torch import save_file
    base = th.arange(12, dtype=th.float32).reshape(3, 4)
    th.save({"view": base[1:, ::2], "base": base}, pt_path)
    save_file({"half": base.half(), "long": th.arange(5)}, st_path)
    th.save({"view": base[1:, ::2], "base": base, "half": base.half(), "long": th.arange(5)},
            legacy_path, _use_new_zipfile_serialization=False)
    return {"written": 3}


def write_bad_files(directory):
    weights = {"w": th.zeros(2)}
    legacy = os.path.join(directory, "legacy_truncated.pt")
    th.save(weights, legacy, _use_new_zipfile_serialization=False)
    with open(legacy, "r+b") as f:
        f.truncate(os.path.getsize(legacy) - 4)
    th.save([th.zeros(2)], os.path.join(directory, "list.pt"))
    th.save({"model": weights, "step": 3}, os.path.join(directory, "checkpoint.pt"))
    return {"written": 3}


def main():
    th.set_num_threads(1)
    commands = {"forward": forward, "compare-safetensors": compare_safetensors,
                "write-state-dict": write_state_dict, "write-classifier": write_classifier,
                "classifier-shapes": classifier_shapes,
                "model-shapes": model_shapes,
                "write-shared-storage": write_shared_storage,
                "write-bad-files": write_bad_files}
    print(json.dumps(commands[sys.argv[1]](*sys.argv[2:])))


if __name__ == "__main__":
    main()
