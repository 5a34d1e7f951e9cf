"""The README's "Using gpukernels in your training code" examples, run exactly as printed there
(compile and autocast; the CUDA graph, DDP and FSDP2 examples are tested with the optimizers)."""

from __future__ import annotations

import pytest
import torch._dynamo

COMPILE_EXAMPLE = '''
import torch
import gpukernels as gk
import gpukernels.torch.nn as gnn

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = gnn.LSTM(16, 32, num_layers=2, bidirectional=True)
        self.act = gnn.GELU()
        self.out = torch.nn.Linear(64, 5)
        self.log_softmax = gnn.LogSoftmax(dim=-1)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.log_softmax(self.out(self.act(y)))

model = Tagger()
compiled = torch.compile(model, fullgraph=True)   # no graph break: every op is a torch.library op
x = torch.randn(10, 4, 16)                          # (seq_len, batch, features)
loss = compiled(x).sum()
loss.backward()
torch.testing.assert_close(compiled(x), model(x))

with gk.use_backend("numpy"):                       # the backend is chosen when each op runs,
    compiled(x)                                     # so this reuses the same compiled graph
'''

AUTOCAST_EXAMPLE = '''
import torch
import gpukernels.torch.nn as gnn

lstm = gnn.LSTM(16, 32)
softmax = gnn.Softmax(dim=-1)
x = torch.randn(10, 4, 16)
with torch.autocast("cpu", dtype=torch.bfloat16):   # or torch.autocast("cuda", dtype=torch.float16)
    y, (h, c) = lstm(x)                             # as torch.nn.LSTM: computed and returned in bf16
    p = softmax(y)                                  # as torch.nn.Softmax: bf16 on the CPU, fp32 on CUDA
assert y.dtype == torch.bfloat16 and p.dtype == torch.bfloat16
p.float().sum().backward()                          # gradients in the parameters' dtype (fp32)
assert lstm.weight_ih_l0.grad.dtype == torch.float32
'''


@pytest.mark.slow  # Inductor compiles the model: about 40 s on one CPU core
def test_compile_example():
    torch._dynamo.reset()
    exec(compile(COMPILE_EXAMPLE, "README:compile", "exec"), {})


def test_autocast_example():
    exec(compile(AUTOCAST_EXAMPLE, "README:autocast", "exec"), {})
