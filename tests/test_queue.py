"""The MoCo queue: FIFO order, size, wrap-around, and that it is saved in checkpoints."""

import torch
import torch.nn.functional as F

from ssl_siamese.methods.queue import KeyQueue


def unit(n, dim=4, offset=0):
    """n distinct unit vectors, recognisable by their first coordinate order."""
    x = torch.zeros(n, dim)
    x[:, 0] = torch.arange(offset, offset + n, dtype=torch.float) + 1
    x[:, 1] = 1.0
    return F.normalize(x, dim=1)


def same_rows(a, b):
    """Equal as sets of rows (up to float rounding)."""
    return torch.allclose(a[a[:, 0].argsort()], b[b[:, 0].argsort()], atol=1e-6)


def test_fifo_order_and_wraparound():
    queue = KeyQueue(size=5, dim=4)
    assert queue.keys.shape == (5, 4)
    first, second = unit(3), unit(4, offset=3)
    queue.enqueue(first)
    assert torch.allclose(queue.keys[:3], first)
    assert queue.pointer.item() == 3
    queue.enqueue(second)  # 2 slots left: keys 3,4 at the end, keys 5,6 wrap to the front
    assert torch.allclose(queue.keys[3:5], second[:2])
    assert torch.allclose(queue.keys[0:2], second[2:])
    assert torch.allclose(queue.keys[2], first[2])  # the oldest surviving key stays in place
    assert queue.pointer.item() == 2
    assert queue.keys.shape == (5, 4)


def test_no_key_is_dropped_at_wraparound():
    queue = KeyQueue(size=8, dim=4)
    for step in range(5):  # 3 keys a step: every write crosses the end at some point
        queue.enqueue(unit(3, offset=3 * step))
    assert same_rows(queue.keys, unit(15)[-8:])


def test_batch_larger_than_queue_keeps_newest():
    queue = KeyQueue(size=4, dim=4)
    keys = unit(6)
    queue.enqueue(keys)
    assert same_rows(queue.keys, keys[-4:])


def test_queue_is_in_state_dict():
    queue = KeyQueue(size=6, dim=4)
    queue.enqueue(unit(4))
    restored = KeyQueue(size=6, dim=4)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.keys, queue.keys)
    assert restored.pointer.item() == 4
