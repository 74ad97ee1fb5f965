#!/usr/bin/env python3
"""Export the trained MTCNN networks that the `facenet-pytorch` package ships, as ONNX.

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/wheels
    python scripts/export_mtcnn.py /tmp/wheels/facenet_pytorch-2.6.0-py3-none-any.whl [OUT_DIR]

Needs torch and onnx only (`pip install torch onnx`): the weights are read from the wheel's
`facenet_pytorch/data/{rnet,onet}.pt` (PyTorch state dicts trained for face detection, ported
from the original MTCNN of Zhang et al. 2016), and the two networks are rebuilt here with the
layer names and shapes of `facenet_pytorch/models/mtcnn.py`, so the package itself (and its
dependencies) need not be installed. Default OUT_DIR: target/onnx-models.

RNet (input [1, 3, 24, 24]) and ONet (input [1, 3, 48, 48]) are convolutions with PReLU
(one slope per channel), max pooling, the NHWC permute before the flatten, a dense layer with
PReLU and two or three linear heads. PReLU is positively homogeneous, so every hidden channel
and neuron is a free scale variable. The face-classification head is exported as logits (the
package applies a softmax after it; the softmax does not change which class wins), so the outputs
are the logits, the box regression and (ONet) the five landmarks.
"""

import io
import os
import sys
import zipfile

import torch
import torch.nn as nn


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_1(x), self.dense5_2(x)


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_1(x), self.dense6_2(x), self.dense6_3(x)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    wheel = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join("target", "onnx-models")
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name, net, side, heads in [("rnet", RNet(), 24, ["logits", "box"]),
                                       ("onet", ONet(), 48, ["logits", "box", "landmarks"])]:
            state = torch.load(io.BytesIO(z.read(f"facenet_pytorch/data/{name}.pt")))
            net.load_state_dict(state)
            net.eval()
            path = os.path.join(out, f"mtcnn_{name}.onnx")
            with torch.no_grad():
                torch.onnx.export(net, (torch.randn(1, 3, side, side),), path, dynamo=False,
                                  opset_version=17, input_names=["input"], output_names=heads,
                                  do_constant_folding=True)
            print(path, os.path.getsize(path), "bytes", flush=True)


if __name__ == "__main__":
    main()
