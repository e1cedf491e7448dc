"""The compiled stain kernels leave the process safe to fork (PyTorch DataLoader workers).

With numba's OpenMP threading layer, a process that ran a parallel kernel aborts every child it
forks ("fork() called from a process already using GNU OpenMP"); the kernels are serial for that
reason, and this test would catch a return of the problem.
"""

from __future__ import annotations

import numpy as np
import torch

from histoscope.stain import MacenkoNormalizer, augment_hed


class _Jittered(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(augment_hed(self.x[i], rng=i).copy())


def test_dataloader_workers_survive_kernels_run_in_the_parent():
    tiles = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    MacenkoNormalizer().fit_reference().transform(tiles)  # the kernels run here, in the parent
    augment_hed(tiles, rng=0)
    loader = torch.utils.data.DataLoader(_Jittered(), batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0].shape == (2, 32, 32, 3)
