#!/usr/bin/env python3
"""The device copy bandwidth (read + write, 2 GiB, PyTorch): the anchor each device call
measures next to its figures."""
import torch

x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize()
s.record()
for _ in range(20):
    y.copy_(x)
e.record()
torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"device copy: {2 * x.numel() / ms / 1e6:.0f} GB/s (read + write) over 2 GiB")
# Read-only (a sum over the same 2 GiB as f32): what a kernel that only streams weights
# may reach, next to the copy anchor the goals are stated against.
xf = x.view(torch.float32)
for _ in range(3):
    xf.sum()
torch.cuda.synchronize()
s.record()
for _ in range(20):
    xf.sum()
e.record()
torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"device read (sum): {x.numel() / ms / 1e6:.0f} GB/s over 2 GiB")
