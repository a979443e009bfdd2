"""Split learning: the split step's gradients are the centralised model's, a whole
vertical run equals centralised training, and clipping/noise behave as documented."""

import pytest
import torch

from strategies.vertical.split import (
    bottom_step,
    build_split_model,
    clip_rows,
    epoch_batches,
    momentum_buffers,
    noisy,
    party_embedding,
    restore_momentum,
    sgd,
    top_step,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed=0, n=64, widths=(5, 7, 3)):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, w, generator=g) for w in widths]
    y = (torch.rand(n, generator=g) < 0.3).long()
    return xs, y


def test_split_step_gradients_equal_the_centralised_models():
    xs, y = _batch()
    weights = torch.tensor([1.0, 2.0])
    central = build_split_model([x.shape[1] for x in xs], 4, seed=11)
    split = build_split_model([x.shape[1] for x in xs], 4, seed=11)  # same init
    for a, b in zip(central.parameters(), split.parameters(), strict=True):
        assert torch.equal(a, b)

    loss_c = torch.nn.functional.cross_entropy(central(xs), y, weight=weights)
    loss_c.backward()

    # Split: parties 1, 2 embed (no graph crosses the wire), the label party runs the
    # top on its own embedding (with graph) and the received ones, parties backprop.
    label_e = party_embedding(split.bottoms[0], xs[0])
    sent = [party_embedding(split.bottoms[p], xs[p]).detach() for p in (1, 2)]
    loss_s, grads = top_step(split.top, [label_e, *sent], y, weights)
    for p in (1, 2):
        bottom_step(party_embedding(split.bottoms[p], xs[p]), grads[p])

    assert torch.equal(loss_s, loss_c.detach())
    for (name, a), b in zip(central.named_parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-8, msg=name)
        assert a.grad.abs().sum() > 0, name


def test_embedding_clipping_bounds_rows_and_noise_is_seeded():
    e = torch.randn(32, 8) * 10
    clipped = clip_rows(e, 1.0)
    assert clipped.norm(dim=1).max() <= 1.0 + 1e-6
    small = torch.randn(4, 8) * 1e-3
    assert torch.equal(clip_rows(small, 1.0), small)  # inside the ball: unchanged
    assert torch.equal(clip_rows(e, 0.0), e)  # 0 = off
    a = noisy(clipped, 1.0, 0.5, torch.Generator().manual_seed(3))
    b = noisy(clipped, 1.0, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert (a - clipped).std().item() == pytest.approx(0.5, rel=0.15)
    assert torch.equal(noisy(clipped, 1.0, 0.0, None), clipped)


def test_bottom_step_refuses_a_gradient_of_the_wrong_shape():
    xs, _ = _batch()
    model = build_split_model([x.shape[1] for x in xs], 4, seed=1)
    e = party_embedding(model.bottoms[1], xs[1])
    with pytest.raises(ValueError, match=r"gradient of shape \(64, 3\) does not match"):
        bottom_step(e, torch.zeros(64, 3))


def test_momentum_survives_a_round_trip_through_saved_buffers():
    xs, y = _batch()
    model = build_split_model([x.shape[1] for x in xs], 4, seed=2)
    twin = build_split_model([x.shape[1] for x in xs], 4, seed=2)
    opt = sgd(model, 0.1, 0.9)
    for _ in range(2):  # continuous optimizer
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xs), y).backward()
        opt.step()
    buffers: dict = {}
    for _ in range(2):  # a fresh optimizer per step, momentum restored (as a party does)
        opt2 = sgd(twin, 0.1, 0.9)
        restore_momentum(twin, opt2, buffers)
        opt2.zero_grad()
        torch.nn.functional.cross_entropy(twin(xs), y).backward()
        opt2.step()
        buffers = momentum_buffers(twin, opt2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_epoch_batches_cover_the_training_ids_once_in_a_seeded_order():
    ids = torch.arange(100, 1100)
    batches = epoch_batches(ids, 256, seed=5, epoch=1)
    assert [len(b) for b in batches] == [256, 256, 256, 232]
    assert torch.equal(torch.cat(batches).sort().values, ids)
    assert all(torch.equal(a, b) for a, b in
               zip(batches, epoch_batches(ids, 256, seed=5, epoch=1), strict=True))  # fmt: skip
    assert not torch.equal(torch.cat(batches), torch.cat(epoch_batches(ids, 256, 5, 2)))
