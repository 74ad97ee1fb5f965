#!/usr/bin/env python3
"""Independent check of `synbal quantize-check` on the MTCNN networks, in PyTorch.

    python scripts/check_mtcnn_quant.py /tmp/wheels/facenet_pytorch-2.6.0-py3-none-any.whl

Loads RNet and ONet from the wheel's state dicts (the networks of scripts/export_mtcnn.py),
quantizes every Conv2d and Linear weight by symmetric round to nearest, `scale = max|w| /
(2^(b-1) - 1)` per tensor or per output channel (biases kept in float, no balancing), and prints
the SQNR in dB of all outputs together on 256 standard normal samples (torch seed 1).
"""

import io
import os
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_mtcnn import ONet, RNet  # noqa: E402


def quantize_(net, bits, per_channel):
    qmax = 2 ** (bits - 1) - 1
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            w = m.weight.data
            if per_channel:
                s = w.abs().flatten(1).max(1).values.view(-1, *([1] * (w.dim() - 1))) / qmax
            else:
                s = w.abs().max() / qmax
            m.weight.data = torch.round(w / s).clamp(-qmax, qmax) * s


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    z = zipfile.ZipFile(sys.argv[1])
    for name, cls, side in [("rnet", RNet, 24), ("onet", ONet, 48)]:
        state = torch.load(io.BytesIO(z.read(f"facenet_pytorch/data/{name}.pt")))
        net = cls()
        net.load_state_dict(state)
        net.eval()
        x = torch.randn(256, 3, side, side, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = torch.cat([o.flatten(1) for o in net(x)], 1)
            for per_channel in [False, True]:
                row = []
                for bits in [8, 6, 4, 3]:
                    q = cls()
                    q.load_state_dict(state)
                    q.eval()
                    quantize_(q, bits, per_channel)
                    yq = torch.cat([o.flatten(1) for o in q(x)], 1)
                    row.append(10 * torch.log10((y ** 2).sum() / ((y - yq) ** 2).sum()).item())
                gran = "per-channel" if per_channel else "per-tensor"
                print(name, gran, " ".join(f"{v:.1f}" for v in row))


if __name__ == "__main__":
    main()
