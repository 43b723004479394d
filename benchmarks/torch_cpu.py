"""PyTorch + timm reference figures (channels_last), run by bench_cpu.py in a subprocess.

Run with a Python that has torch and timm (the project itself never imports torch); prints
one JSON object: img/s per model for inference and an SGD training step, and per-layer
forward / input-gradient / kernel-gradient milliseconds of grouped convolutions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

WARMUP = 2  # as common.WARMUP: untimed calls before the timed ones (oneDNN picks kernels)


def median_seconds(fn, repeats, warmup=WARMUP):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_figures(name, batch, repeats, dtype):
    model = timm.create_model(name).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 224, 224).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,))
    out = {}
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        out["infer_img_s"] = batch / median_seconds(lambda: model(images), repeats)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    out["train_img_s"] = batch / median_seconds(step, repeats)
    return out


def layer_figures(layers, repeats):
    return [one_layer(*layer, repeats) for layer in layers]


def one_layer(batch, size, channels, groups, stride, repeats):
    """Milliseconds of forward, input gradient and kernel gradient of a grouped 3x3 conv."""
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels // groups, 3, 3) * 0.1
    x.requires_grad_(True)
    w.requires_grad_(True)

    def conv():
        return F.conv2d(x, w, stride=stride, padding=1, groups=groups)

    dy = torch.randn_like(conv())
    ms = {}
    with torch.no_grad():
        ms["fwd"] = median_seconds(conv, repeats)
    for what, inputs in (("dx", x), ("dk", w)):
        def grad(inputs=inputs):
            torch.autograd.grad(conv(), inputs, dy)
        # forward + one gradient, minus the forward: the gradient alone
        ms[what] = max(median_seconds(grad, repeats) - ms["fwd"], 0.0)
    return {k: v * 1e3 for k, v in ms.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnext50_32x4d,seresnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", default="[]", help="JSON list of [batch, size, C, G, s]")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    result = {"torch": torch.__version__, "timm": timm.__version__,
              "threads": torch.get_num_threads(), "models": {}}
    for name in filter(None, args.models.split(",")):
        result["models"][name] = model_figures(name, args.batch, args.repeats, dtype)
    result["layers"] = layer_figures(json.loads(args.layers), args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
