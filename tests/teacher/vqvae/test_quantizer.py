"""EMA codebook bottleneck: nearest codes, commit loss, EMA formula, restarts, state, ranks."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from teacher.vqvae.quantizer import Bottleneck, BottleneckBlock

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and unlike two it does not slow
    down many-fold when a neighbouring process keeps the other core busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _block(k: torch.Tensor, mu: float = 0.9, threshold: float = 1.0) -> BottleneckBlock:
    block = BottleneckBlock(k.shape[0], k.shape[1], mu, threshold)
    block.k.copy_(k)
    block.restore_ema()
    return block


def test_nearest_code_commit_loss_and_straight_through():
    k = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    block = _block(k)
    # x: Tensor[B=1, D=2, T=4]; nearest codes 0, 1, 2, 1
    x = torch.tensor([[[0.1, 0.9, 0.2, 2.0], [-0.1, 0.2, 1.5, 0.0]]], requires_grad=True)
    q = block(x, update=False)
    assert q.codes.tolist() == [[0, 1, 2, 1]]
    torch.testing.assert_close(q.x, k[q.codes[0]].t().unsqueeze(0))
    sq = [(0.1**2 + 0.1**2), (0.1**2 + 0.2**2), (0.2**2 + 0.5**2), (1.0**2 + 0.0)]
    assert q.commit_loss.item() == pytest.approx(sum(sq) / 8)  # mean over N*D elements
    assert q.metrics["fit"].item() == pytest.approx(sum(sq) / 4)  # mean squared distance
    assert q.metrics["usage"].item() == 3
    w = torch.randn_like(x)
    (q.x * w).sum().backward()
    torch.testing.assert_close(x.grad, w)  # straight-through: identity on the way back
    # the commit loss pulls x only (the codebook gets no gradient, it is a buffer)
    x.grad = None
    block(x, update=False).commit_loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x - q.x).detach() / 8)


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    kk, d, mu = 4, 3, 0.9
    k = torch.randn(kk, d)
    block = _block(k, mu=mu, threshold=1.0)
    block.k_sum.copy_(k * 5)
    block.k_elem.fill_(5.0)
    x = torch.randn(12, d)
    codes, _ = block.quantise(x)
    metrics = block.update_codebook(x, codes)
    for j in range(kk):
        sel = x[codes == j]
        k_sum = mu * 5 * k[j] + (1 - mu) * sel.sum(0)
        k_elem = mu * 5 + (1 - mu) * len(sel)
        torch.testing.assert_close(block.k_sum[j], k_sum)
        assert block.k_elem[j].item() == pytest.approx(k_elem)
        torch.testing.assert_close(block.k[j], k_sum / k_elem)  # all alive: no restart
    assert metrics["alive"].item() == kk
    counts = torch.bincount(codes, minlength=kk).float()
    p = counts / counts.sum()
    assert metrics["entropy"].item() == pytest.approx(-(p * torch.log(p + 1e-8)).sum().item())
    assert metrics["dk"].item() == pytest.approx(((block.k - k).norm() / math.sqrt(kk * d)).item())


def test_dead_codes_are_restarted_on_encoder_outputs():
    torch.manual_seed(1)
    k = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    block = _block(k, mu=0.99, threshold=1.0)
    block.k_sum.copy_(k * 50)
    block.k_elem.copy_(torch.tensor([50.0, 50.0, 0.5]))  # code 2 is dying
    x = torch.randn(8, 2) * 0.1  # every vector snaps to code 0
    codes, _ = block.quantise(x)
    assert torch.all(codes == 0)
    block.update_codebook(x, codes)
    # code 2 (count 0.99*0.5 < 1) was replaced by one of the batch vectors (N >= K: no noise)
    assert torch.isclose(block.k[2], x).all(dim=1).any()
    # code 1 stays alive and keeps its mean even though it was not used this batch
    torch.testing.assert_close(block.k[1], k[1])
    assert block.k_elem[1].item() == pytest.approx(0.99 * 50)


def test_first_training_call_initialises_from_batch_with_tiling():
    torch.manual_seed(2)
    block = BottleneckBlock(l_bins=16, emb_width=4, mu=0.99)
    assert not bool(block.initialised)
    x = torch.randn(1, 4, 5)  # 5 vectors < 16 codes: tiled with small noise
    q = block(x, update=True)
    assert bool(block.initialised)
    vecs = x[0].t()
    dist = torch.cdist(block.k, vecs).min(dim=1).values
    assert dist.max().item() < 0.1  # every code is an encoder output plus noise std 0.005
    assert torch.unique(block.k, dim=0).shape[0] == 16  # the noise makes copies distinct
    assert q.metrics["usage"].item() >= 1 and "alive" in q.metrics
    block(x, update=True)  # later calls update, they do not re-initialise
    # codes unused by this batch fall to count 0.99 < 1 and are restarted (Jukebox does the
    # same right after init); restarted or averaged, every code is still near an encoder output
    assert torch.cdist(block.k, vecs).min(dim=1).values.max().item() < 0.1
    assert block.k_elem.sum().item() == pytest.approx(0.99**2 * 16 + 0.01 * (0.99 * 5 + 5))


def test_eval_forward_leaves_codebook_alone():
    torch.manual_seed(3)
    bottleneck = Bottleneck(l_bins=8, emb_width=4, mu=0.99, levels=2)
    xs = [torch.randn(2, 4, 16), torch.randn(2, 4, 4)]
    bottleneck.train()
    bottleneck(xs)
    state = {k: v.clone() for k, v in bottleneck.state_dict().items()}
    bottleneck.eval()
    out = bottleneck([x.requires_grad_() for x in xs])
    for key, value in bottleneck.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not out[0].x.requires_grad  # eval mode detaches, as in Jukebox
    assert out[1].codes.shape == (2, 4) and out[1].metrics["dk"].item() == 0.0


def test_openai_style_state_dict_restores_ema():
    block = BottleneckBlock(l_bins=6, emb_width=3, mu=0.99)
    k = torch.randn(6, 3)
    block.load_state_dict({"k": k}, strict=True)  # no EMA keys, like OpenAI's checkpoint
    torch.testing.assert_close(block.k, k)
    torch.testing.assert_close(block.k_sum, k)
    assert torch.all(block.k_elem == 1) and bool(block.initialised)
    block.restore_ema(num_tokens=60)  # Jukebox restore_k(num_tokens): expected count 60/6
    torch.testing.assert_close(block.k_sum, k * 10)
    assert torch.all(block.k_elem == 10)
    # a full state dict round-trips exactly, a partial EMA state is still an error
    other = BottleneckBlock(l_bins=6, emb_width=3, mu=0.99)
    other.load_state_dict(block.state_dict(), strict=True)
    assert torch.equal(other.k_elem, block.k_elem)
    with pytest.raises(RuntimeError, match="k_elem"):
        other.load_state_dict({"k": k, "k_sum": k}, strict=True)


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from teacher.vqvae.quantizer import BottleneckBlock

    rank, init_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    torch.manual_seed(100 + rank)  # different data and different RNG on each rank
    out = {}
    for threshold in (0.0, 1e6):  # 0: no restarts; 1e6: every code restarts every step
        block = BottleneckBlock(l_bins=8, emb_width=3, mu=0.9, threshold=threshold)
        x = torch.randn(2, 3, 5) + rank
        block(x, update=True)  # first call: init from rank 0's random vectors
        block(torch.randn(2, 3, 5) * 2, update=True)
        out[str(threshold)] = {n: b.tolist() for n, b in block.state_dict().items()}
    json.dump(out, open(out_file, "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_ranks_hold_identical_codebooks(tmp_path):
    """Two real gloo processes with different data end with the same codebook."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                str(tmp_path / "init"),
                str(tmp_path / f"{r}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert r0 == r1
    # counts are all-reduced: the EMA count mass is mu^2*1 + (1-mu)*(mu*20 + 20) per code summed
    k_elem = torch.tensor(r0["0.0"]["k_elem"])
    assert k_elem.sum().item() == pytest.approx(8 * 0.81 + 0.1 * (0.9 * 20 + 20), rel=1e-5)
