import torch
import torch.nn as nn

from pocketnas.evaluation.cost import count_flops, fp32_size_bytes, measure_latency


class Tiny(nn.Module):
    input_size = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)   # 8x8x4 outputs x 27 MACs
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.PReLU(4)
        self.pool = nn.MaxPool2d(3, 2, 1)                       # -> 4x4x4
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.skip = nn.Identity()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.conv(x))))
        x = self.skip(x) + self.avg(x)
        return self.fc(x.flatten(1))


def test_flop_rules_by_hand():
    f = count_flops(Tiny())
    conv = 2 * 8 * 8 * 4 * 27
    bn = 2 * 8 * 8 * 4
    prelu = 8 * 8 * 4
    pools = 9 * 4 * 4 * 4 + 9 * 4 * 4 * 4
    fc = 2 * 64 * 10
    assert f.total == conv + bn + prelu + pools + fc
    assert f.by_op["convolution"] == conv


def test_size_and_latency():
    model = Tiny()
    n_floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert n_floats * 4 < fp32_size_bytes(model) < n_floats * 4 + 20_000
    t = measure_latency(model, batch=1, threads=1, warmup=1, repeats=3)
    assert 0 < t < 5
    assert torch.get_num_threads() >= 1
