"""bfr.api.Restorer around a stub model: how crops are batched, seeded and counted in the progress."""

import numpy as np

from bfr.api import BATCH_PIXELS, Restorer


class StubModel:
    """Records each batch; 'restores' by adding the seed to the pixels, so the output says which seed it got."""

    name, title, tier, framing = "stub", "Stub", "paper", "ffhq"
    defaults = dict(seed=0)

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.batches: list[tuple[int, int | None]] = []

    def restore(self, lq, *, seed=0, progress=None, **options):
        self.batches.append((len(lq), seed))
        for done in range(1, 4):
            progress(done, 3)
        return (lq + (seed or 0) / 100).clamp(0, 1)


def test_crops_are_restored_in_seeded_batches_with_one_progress_count():
    model = StubModel(512)
    assert BATCH_PIXELS // 512 ** 2 == 4
    seen = []
    crops = [np.full((8, 8, 3), 0.5, np.float32) for _ in range(10)]
    out = Restorer(model).restore_crops(crops, progress=lambda d, t: seen.append((d, t)), seed=7)
    assert model.batches == [(4, 7), (4, 8), (2, 9)]  # batch k gets seed + k
    assert seen == [(d, 9) for d in range(1, 10)]  # one count over all batches, never going back
    assert len(out) == 10 and np.allclose(out[0], 0.57) and np.allclose(out[9], 0.59)

    small = StubModel(64)
    Restorer(small).restore_crops(crops, progress=lambda d, t: None)  # no seed given: the model's default
    assert small.batches == [(10, 0)]
    none = StubModel(64)
    Restorer(none).restore_crops(crops[:2], progress=lambda d, t: None, seed=None)
    assert none.batches == [(2, None)]
