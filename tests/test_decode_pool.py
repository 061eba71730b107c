"""DecodePool: worker processes hand results over through shared memory, in input order."""

from __future__ import annotations

import numpy as np

from filters.decode_pool import DecodePool


def test_results_in_order_through_slots_inline_and_errors():
    items = [5, 3, 300_000, "bad", 7, 1, 4]  # 300_000 int64 = 2.3 MB > the 1 MB slot: pickled
    seen = []
    with DecodePool(np.arange, workers=2, slot_mb=1.0) as pool:
        for batch in pool.batches(items, batch_size=3, ahead=1):
            assert len(batch) <= 3
            for d in batch:  # views are valid until the next batch: check them now
                if d.item == "bad":
                    assert d.frames is None and "TypeError" in d.error
                else:
                    assert d.error is None
                    np.testing.assert_array_equal(d.frames, np.arange(d.item))
            seen += [d.item for d in batch]
        assert seen == items
        # a second pass reuses the workers and the buffer
        again = [len(d.frames) for b in pool.batches([2, 9], batch_size=4) for d in b]
    assert again == [2, 9]
