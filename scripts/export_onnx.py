#!/usr/bin/env python3
"""Export ONNX models for synbal's tests and benchmarks.

    python scripts/export_onnx.py [OUT_DIR]          # default: target/onnx-models
    python scripts/export_onnx.py OUT_DIR --small    # only the small hand-built cases

Needs torch, torchvision and onnx (`pip install torch torchvision onnx`); CI does not: the
small cases are committed under tests/fixtures/onnx/ and the Rust tests build their own models.

Large models (torchvision, random weights, nothing is downloaded): resnet18, resnet50,
mobilenet_v2, squeezenet1_1, densenet121. Every BatchNorm gets random statistics and affine
parameters (so that folding it changes the weights), then the model is put in eval mode and
exported with the TorchScript exporter at opset 17, input [1, 3, 224, 224]; that exporter folds
each BatchNorm that follows a convolution into the convolution.

Small cases: concat (two branches joined on channels), downsample (a residual block whose skip
path has a strided 1x1 convolution), two_heads (two outputs), prelu, permute_flatten (NHWC
permute before flatten, as in MTCNN), relu6 (Clip held fixed) and external (weights in an
external data file).
"""

import os
import sys

import torch
import torch.nn as nn


def randomize_batchnorm(model, gen):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.data.copy_(0.2 * torch.randn(n, generator=gen))


def export(model, shape, path, external=False):
    model.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=None,
                          do_constant_folding=True)
    if external:
        import onnx
        m = onnx.load(path)
        base = os.path.basename(path)
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=base + ".data", size_threshold=0)
    print(path, os.path.getsize(path), "bytes", flush=True)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


class Downsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = torch.relu(self.c2(torch.relu(self.c1(h))) + self.down(h))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, 2, 1)
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.cls(h), self.box(h)


class PRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


class PermuteFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6 * 6, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.c(x)).permute(0, 2, 3, 1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


class Relu6(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(nn.functional.relu6(self.c1(x)))))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = args[0] if args else os.path.join("target", "onnx-models")
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    small = {
        "concat": (Concat(), (1, 3, 8, 8)),
        "downsample": (Downsample(), (1, 3, 8, 8)),
        "two_heads": (TwoHeads(), (1, 3, 8, 8)),
        "prelu": (PRelu(), (1, 3, 8, 8)),
        "permute_flatten": (PermuteFlatten(), (1, 3, 6, 6)),
        "relu6": (Relu6(), (1, 3, 8, 8)),
        "external": (Downsample(), (1, 3, 8, 8)),
    }
    for name, (m, shape) in small.items():
        with torch.no_grad():
            for p in m.parameters():  # far from balanced: scale each output row
                if p.dim() >= 2:
                    p.mul_(torch.exp(2 * torch.rand(p.shape[0], *[1] * (p.dim() - 1), generator=gen) - 1))
        export(m, shape, os.path.join(out, name + ".onnx"), external=(name == "external"))
    if "--small" in sys.argv:
        return
    import torchvision.models as tvm
    for name in ["resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1", "densenet121"]:
        m = getattr(tvm, name)(weights=None)
        randomize_batchnorm(m, gen)
        export(m, (1, 3, 224, 224), os.path.join(out, name + ".onnx"))


if __name__ == "__main__":
    main()
