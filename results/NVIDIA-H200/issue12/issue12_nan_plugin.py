
import torch, torch.nn.functional as F
from accumbench import Workload

def build():
    seen = []
    def batch(n, g):
        entry = next((e for e in seen if e[0] is g), None) or seen.append([g, 0]) or seen[-1]
        entry[1] += 1
        x = torch.randn(n, 16, generator=g)
        if entry[1] == 2:
            x[0, 0] = float("nan")
        return x, torch.randint(0, 4, (n,), generator=g)
    return Workload(name="nan-at-2", build_model=lambda: torch.nn.Linear(16, 4), make_batch=batch,
                    loss=lambda out, b: F.cross_entropy(out, b[1]))
