"""The PyTorch references of kernels/ against naive per-element loops written from docs/architecture.md section 7.

The naive versions below compute every output element from the spec's formula with Python loops and
integer index arithmetic; they share no code with kernels/. Forward and gradients are compared in
float64. Further: block causality of every token-mixing op, hand-checked neighborhood windows, gate
normalisation invariants and a memory-sanity run at the 512 px scale list (L = 2240).
"""

from __future__ import annotations

import time

import pytest
import torch

import kernels

PATCH_NUMS = [
    pytest.param((1,), id="pn=1"),
    pytest.param((1, 2), id="pn=1,2"),
    pytest.param((1, 2, 3), id="pn=1,2,3"),
    pytest.param((1, 2, 3, 4), id="pn=1,2,3,4"),
]
PN_512PX = kernels.SCHEDULES["512"]  # L = 2240


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    # These tests are about the reference; a VAR_KERNEL_BACKEND in the caller's shell must not leak in.
    monkeypatch.delenv("VAR_KERNEL_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _rand(*shape, seed: int = 0, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    # A fixed random cotangent, so every output element contributes to the compared gradient.
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(123), dtype=out.dtype)
    # materialize_grads: an input the output ignores (gates of a width-1 scan) gets zeros, not None.
    return torch.autograd.grad(out, inputs, cotangent, allow_unused=True, materialize_grads=True)


def _gradcheck(fn, inputs) -> bool:
    # fast_mode checks random projections of the Jacobian: the same bugs, a fraction of the time.
    return torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def _assert_same_fwd_bwd(fn_ref, fn_naive, inputs: list[torch.Tensor]) -> None:
    out_ref, out_naive = fn_ref(*inputs), fn_naive(*inputs)
    torch.testing.assert_close(out_ref, out_naive)
    for g_ref, g_naive in zip(_grads(out_ref, inputs), _grads(out_naive, inputs)):
        torch.testing.assert_close(g_ref, g_naive)


def _assert_matches_naive(op, naive, inputs: list[torch.Tensor], *args, **kwargs) -> None:
    """``op(*inputs, *args, **kwargs)`` and its gradients against the naive version called the same way."""
    _assert_same_fwd_bwd(lambda *t: op(*t, *args, **kwargs), lambda *t: naive(*t, *args, **kwargs), inputs)


# ----------------------------------------------------------------------------------------------
# Naive versions, one output element (or one query row) at a time


def _token_layout(patch_nums):
    """Per token: (scale index, row, column), from the spec's ordering."""
    layout = []
    for s, p in enumerate(patch_nums):
        layout += [(s, r, c) for r in range(p) for c in range(p)]
    return layout


def _scale_begin(patch_nums, s):
    return sum(p * p for p in patch_nums[:s])


def _naive_attention_rows(q, k, v, scale, visible_keys):
    """out[b, h, i] = softmax over j in visible_keys(i) of scale * q[i].k[j], applied to v."""
    B, H, L, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                js = visible_keys(i)
                logits = torch.stack([scale * torch.dot(q[b, h, i], k[b, h, j]) for j in js])
                w = torch.exp(logits - logits.max())
                w = w / w.sum()
                out[b, h, i] = sum(w[n] * v[b, h, j] for n, j in enumerate(js))
    return out


def naive_block_causal_attention(q, k, v, patch_nums, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    layout = _token_layout(patch_nums)
    return _naive_attention_rows(
        q, k, v, scale, lambda i: [j for j in range(len(layout)) if layout[j][0] <= layout[i][0]]
    )


def naive_neighborhood_keys(patch_nums, kernel_size, i):
    """Token indices visible to query token i, straight from docs/architecture.md section 7.2."""
    s_q, row, col = _token_layout(patch_nums)[i]
    p_k = patch_nums[s_q]
    keys = []
    for s in range(s_q + 1):
        n = patch_nums[s]
        K = min(kernel_size, n)
        start_r = min(max(((2 * row + 1) * n) // (2 * p_k) - K // 2, 0), n - K)
        start_c = min(max(((2 * col + 1) * n) // (2 * p_k) - K // 2, 0), n - K)
        begin = _scale_begin(patch_nums, s)
        keys += [begin + r * n + c for r in range(start_r, start_r + K) for c in range(start_c, start_c + K)]
    return keys


def naive_neighborhood_attention(q, k, v, patch_nums, kernel_size, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _naive_attention_rows(q, k, v, scale, lambda i: naive_neighborhood_keys(patch_nums, kernel_size, i))


def naive_external_attention(q, mem_k, mem_v, patch_nums, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, H, L, _ = q.shape
    S = mem_k.shape[1]
    layout = _token_layout(patch_nums)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            a = [[scale * torch.dot(q[b, h, n], mem_k[h, m]) for m in range(S)] for n in range(L)]
            for n in range(L):
                visible = [n2 for n2 in range(L) if layout[n2][0] <= layout[n][0]]
                A = [torch.exp(a[n][m]) / sum(torch.exp(a[n2][m]) for n2 in visible) for m in range(S)]
                total = sum(A) + 1e-6
                out[b, h, n] = sum(A[m] / total * mem_v[h, m] for m in range(S))
    return out


def naive_ragged_depthwise_conv2d(x, patch_nums, weight, bias=None, dilation=1):
    B, _, C = x.shape
    k = weight.shape[-1]
    out = torch.zeros_like(x)
    for t, (s, row, col) in enumerate(_token_layout(patch_nums)):
        p, begin = patch_nums[s], _scale_begin(patch_nums, s)
        for b in range(B):
            for c in range(C):
                acc = bias[c] if bias is not None else x.new_zeros(())
                for u in range(k):
                    for w in range(k):
                        r2, c2 = row + dilation * (u - k // 2), col + dilation * (w - k // 2)
                        if 0 <= r2 < p and 0 <= c2 < p:  # zero padding; never another scale
                            acc = acc + weight[c, u, w] * x[b, begin + r2 * p + c2, c]
                out[b, t, c] = acc
    return out


def naive_gspn_scan(x, lam, g, chunk=None):
    N, C, H, W = x.shape
    out = torch.zeros_like(x)
    for n in range(N):
        for ch in range(C):
            h = [[None] * W for _ in range(H)]

            def prev(r, c, h=h):
                return h[r][c] if 0 <= r < H else 0.0  # rows outside the map read as 0

            for c in range(W):
                for r in range(H):
                    inject = lam[n, ch, r, c] * x[n, ch, r, c]
                    if c == 0 or (chunk is not None and c % chunk == 0):
                        h[r][c] = inject
                    else:
                        h[r][c] = (
                            g[n, 0, ch, r, c] * prev(r - 1, c - 1)
                            + g[n, 1, ch, r, c] * prev(r, c - 1)
                            + g[n, 2, ch, r, c] * prev(r + 1, c - 1)
                            + inject
                        )
                    out[n, ch, r, c] = h[r][c]
    return out


def naive_gspn_normalize_gates(g_raw):
    N, _, C, H, W = g_raw.shape
    out = torch.zeros_like(g_raw)
    for n in range(N):
        for ch in range(C):
            for r in range(H):
                for c in range(W):
                    sig = [torch.sigmoid(g_raw[n, i, ch, r, c]) for i in range(3)]
                    if r == 0:
                        sig[0] = sig[0] * 0
                    if r == H - 1:
                        sig[2] = sig[2] * 0
                    total = torch.clamp(sig[0] + sig[1] + sig[2], min=1e-7)
                    for i in range(3):
                        out[n, i, ch, r, c] = sig[i] / total
    return out


def _L(patch_nums):
    return sum(p * p for p in patch_nums)


# ----------------------------------------------------------------------------------------------
# Reference vs naive: forward and gradients, float64


@pytest.mark.parametrize("patch_nums", PATCH_NUMS)
def test_block_causal_attention_matches_naive(patch_nums):
    B, H, D = 2, 2, 5
    q, k, v = (_rand(B, H, _L(patch_nums), D, seed=s) for s in range(3))
    _assert_matches_naive(kernels.block_causal_attention, naive_block_causal_attention, [q, k, v], patch_nums)


def test_block_causal_attention_custom_scale_and_gradcheck():
    patch_nums = (1, 2)
    q, k, v = (_rand(1, 2, 5, 3, seed=s) for s in range(3))
    _assert_matches_naive(
        kernels.block_causal_attention, naive_block_causal_attention, [q, k, v], patch_nums, scale=0.7
    )
    assert _gradcheck(lambda q, k, v: kernels.block_causal_attention(q, k, v, patch_nums), (q, k, v))


@pytest.mark.parametrize("kernel_size", [1, 3, 5], ids=lambda ks: f"ks={ks}")
@pytest.mark.parametrize("patch_nums", PATCH_NUMS)
def test_neighborhood_attention_matches_naive(patch_nums, kernel_size):
    B, H, D = 1, 2, 4
    q, k, v = (_rand(B, H, _L(patch_nums), D, seed=s) for s in range(3))
    _assert_matches_naive(
        kernels.neighborhood_attention, naive_neighborhood_attention, [q, k, v], patch_nums, kernel_size
    )


def test_neighborhood_attention_larger_map_matches_naive_and_gradcheck():
    # A coarse scale larger than the window (n=5 > 3), so projected windows on earlier scales move.
    patch_nums, kernel_size = (1, 5, 7), 3
    q, k, v = (_rand(1, 1, _L(patch_nums), 3, seed=s) for s in range(3))
    _assert_matches_naive(
        kernels.neighborhood_attention, naive_neighborhood_attention, [q, k, v], patch_nums, kernel_size, scale=0.9
    )
    small = [t.detach()[:, :, :5].clone().requires_grad_() for t in (q, k, v)]
    assert _gradcheck(lambda q, k, v: kernels.neighborhood_attention(q, k, v, (1, 2), 1), small)


@pytest.mark.parametrize("patch_nums", PATCH_NUMS)
def test_external_attention_matches_naive(patch_nums):
    B, H, D, S = 2, 2, 3, 4
    q = _rand(B, H, _L(patch_nums), D, seed=0)
    mem_k, mem_v = _rand(H, S, D, seed=1), _rand(H, S, D, seed=2)
    _assert_matches_naive(kernels.external_attention, naive_external_attention, [q, mem_k, mem_v], patch_nums)


def test_external_attention_custom_scale_and_gradcheck():
    patch_nums = (1, 2)
    q, mem_k, mem_v = _rand(1, 2, 5, 3, seed=0), _rand(2, 4, 3, seed=1), _rand(2, 4, 3, seed=2)
    _assert_matches_naive(
        kernels.external_attention, naive_external_attention, [q, mem_k, mem_v], patch_nums, scale=2.0
    )
    assert _gradcheck(lambda q, mk, mv: kernels.external_attention(q, mk, mv, patch_nums), (q, mem_k, mem_v))


@pytest.mark.parametrize(
    "k, dilation, with_bias",
    [
        pytest.param(1, 1, True, id="k=1"),
        pytest.param(3, 1, True, id="k=3"),
        pytest.param(3, 2, False, id="k=3-d=2-nobias"),
        pytest.param(5, 1, True, id="k=5"),
    ],
)
@pytest.mark.parametrize("patch_nums", PATCH_NUMS)
def test_ragged_depthwise_conv2d_matches_naive(patch_nums, k, dilation, with_bias):
    B, C = 2, 3
    x, weight = _rand(B, _L(patch_nums), C, seed=0), _rand(C, k, k, seed=1)
    bias = _rand(C, seed=2) if with_bias else None
    inputs = [x, weight] + ([bias] if with_bias else [])
    _assert_same_fwd_bwd(
        lambda x, w, *b: kernels.ragged_depthwise_conv2d(x, patch_nums, w, *b, dilation=dilation),
        lambda x, w, *b: naive_ragged_depthwise_conv2d(x, patch_nums, w, *b, dilation=dilation),
        inputs,
    )


def test_ragged_depthwise_conv2d_lka_shapes_gradcheck():
    # The LKA dilated conv of docs/architecture.md section 7.4 (7x7, dilation 3) on maps smaller than its reach.
    patch_nums = (1, 2, 3)
    x, weight, bias = _rand(1, 14, 2, seed=0), _rand(2, 7, 7, seed=1), _rand(2, seed=2)
    _assert_same_fwd_bwd(
        lambda x, w, b: kernels.ragged_depthwise_conv2d(x, patch_nums, w, b, dilation=3),
        lambda x, w, b: naive_ragged_depthwise_conv2d(x, patch_nums, w, b, dilation=3),
        [x, weight, bias],
    )
    assert _gradcheck(
        lambda x, w, b: kernels.ragged_depthwise_conv2d(x, patch_nums, w, b, dilation=3), (x, weight, bias)
    )


GSPN_SHAPES = [
    pytest.param((1, 1, 1, 1), None, id="N1C1H1W1"),
    pytest.param((2, 2, 1, 5), None, id="H=1"),
    pytest.param((2, 2, 4, 5), None, id="N2C2H4W5"),
    pytest.param((1, 2, 3, 7), 3, id="H3W7-chunk3"),
    pytest.param((1, 1, 4, 4), 1, id="chunk1"),
    pytest.param((1, 2, 5, 6), 8, id="chunk>W"),
]


@pytest.mark.parametrize("shape, chunk", GSPN_SHAPES)
def test_gspn_scan_matches_naive(shape, chunk):
    N, C, H, W = shape
    x, lam = _rand(N, C, H, W, seed=0), _rand(N, C, H, W, seed=1)
    # Normalised gates, as the op expects; detached so g is a leaf the gradient check can compare.
    g = kernels.gspn_normalize_gates(_rand(N, 3, C, H, W, seed=2, requires_grad=False)).requires_grad_()
    _assert_matches_naive(kernels.gspn_scan, naive_gspn_scan, [x, lam, g], chunk=chunk)


@pytest.mark.parametrize(
    "shape, chunk", [((1, 1, 3, 4), 3), ((2, 2, 3, 5), None), ((1, 2, 1, 4), None), ((1, 1, 2, 5), 1)]
)
def test_gspn_scan_gradcheck(shape, chunk):
    # The reference's backward is hand-written (a reversed scan): checked against finite differences.
    N, C, H, W = shape
    x, lam, g = _rand(N, C, H, W, seed=0), _rand(N, C, H, W, seed=1), _rand(N, 3, C, H, W, seed=2)
    assert _gradcheck(lambda x, lam, g: kernels.gspn_scan(x, lam, g, chunk=chunk), (x, lam, g))


def columnwise_gspn_scan(x, lam, g, chunk=None):
    """The scan as one vectorised step per column, differentiated by autograd (the reference before
    its backward was written by hand): the float32 forward must match it exactly."""
    g_up, g_mid, g_down = g.unbind(dim=1)
    h_cols, h = [], None
    for c in range(x.shape[-1]):
        inject = lam[..., c] * x[..., c]
        if h is None or (chunk is not None and c % chunk == 0):
            h = inject
        else:
            from_up = torch.nn.functional.pad(h[..., :-1], (1, 0))
            from_down = torch.nn.functional.pad(h[..., 1:], (0, 1))
            h = g_up[..., c] * from_up + g_mid[..., c] * h + g_down[..., c] * from_down + inject
        h_cols.append(h)
    return torch.stack(h_cols, dim=-1)


@pytest.mark.parametrize("chunk", [None, 3])
def test_gspn_scan_float32_is_the_columnwise_scan(chunk):
    gen = torch.Generator().manual_seed(0)
    N, C, H, W = 3, 5, 6, 7
    x, lam = torch.randn(N, C, H, W, generator=gen), torch.randn(N, C, H, W, generator=gen)
    g = kernels.gspn_normalize_gates(torch.randn(N, 3, C, H, W, generator=gen))
    inputs = [t.clone().requires_grad_() for t in (x, lam, g)]
    out, expected = kernels.gspn_scan(*inputs, chunk=chunk), columnwise_gspn_scan(*inputs, chunk=chunk)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the same products, added in the same order
    for got, want in zip(_grads(out, inputs), _grads(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # summed in another order


def test_gspn_scan_reads_gates_broadcast_over_channels_as_per_channel_gates():
    # GSPN shares its gates over a head's channels: an expanded (stride 0) g is read without a copy,
    # and must give what the same gates written out per channel give, gradients included.
    N, C, H, W = 2, 3, 4, 5
    x, lam = _rand(N, C, H, W, seed=0), _rand(N, C, H, W, seed=1)
    g_N31HW = kernels.gspn_normalize_gates(_rand(N, 3, 1, H, W, seed=2, requires_grad=False)).requires_grad_()
    _assert_same_fwd_bwd(
        lambda x, lam, g: kernels.gspn_scan(x, lam, g.expand(N, 3, C, H, W), chunk=3),
        lambda x, lam, g: kernels.gspn_scan(x, lam, g.expand(N, 3, C, H, W).contiguous(), chunk=3),
        [x, lam, g_N31HW],
    )


@pytest.mark.parametrize("H", [1, 2, 4], ids=lambda H: f"H={H}")
def test_gspn_normalize_gates_matches_naive(H):
    g_raw = _rand(2, 3, 2, H, 3, seed=0)
    _assert_same_fwd_bwd(kernels.gspn_normalize_gates, naive_gspn_normalize_gates, [g_raw])
    assert _gradcheck(kernels.gspn_normalize_gates, (g_raw,))


@pytest.mark.parametrize("H", [1, 2, 5], ids=lambda H: f"H={H}")
def test_gspn_normalize_gates_invariants(H):
    # Raw gates within +-12: the sum of sigmoids stays far above the 1e-7 clamp, so it is exactly 1.
    g = kernels.gspn_normalize_gates(3 * _rand(2, 3, 4, H, 6, seed=0, requires_grad=False))
    in_map = torch.ones_like(g, dtype=torch.bool)
    in_map[:, 0, :, 0] = False  # g0 reads row -1 from row 0
    in_map[:, 2, :, H - 1] = False  # g2 reads row H from row H-1
    assert (g[in_map] > 0).all()
    assert (g[~in_map] == 0).all()
    expected_sum = torch.ones_like(g[:, 0])
    torch.testing.assert_close(g.sum(dim=1), expected_sum)


# ----------------------------------------------------------------------------------------------
# Neighborhood attention: equivalence with full attention, and hand-checked windows


@pytest.mark.parametrize("patch_nums", [*PATCH_NUMS, pytest.param((1, 3, 5), id="pn=1,3,5")])
def test_neighborhood_with_kernel_covering_every_map_is_block_causal(patch_nums):
    q, k, v = (_rand(2, 2, _L(patch_nums), 4, seed=s, requires_grad=False) for s in range(3))
    full = kernels.block_causal_attention(q, k, v, patch_nums)
    smallest_covering = max(patch_nums) | 1  # the smallest odd kernel_size >= max(patch_nums)
    for kernel_size in (smallest_covering, smallest_covering + 4):
        torch.testing.assert_close(kernels.neighborhood_attention(q, k, v, patch_nums, kernel_size), full)


@pytest.mark.parametrize("kernel_size", [1, 3], ids=lambda ks: f"ks={ks}")
def test_neighborhood_with_small_kernel_differs_from_block_causal(kernel_size):
    patch_nums = (1, 2, 3, 4)  # the last scale (4 > 3) is wider than both windows
    q, k, v = (_rand(1, 2, 30, 4, seed=s, requires_grad=False) for s in range(3))
    local = kernels.neighborhood_attention(q, k, v, patch_nums, kernel_size)
    assert not torch.allclose(local, kernels.block_causal_attention(q, k, v, patch_nums))
    torch.testing.assert_close(local, naive_neighborhood_attention(q, k, v, patch_nums, kernel_size))


def _window(begin, n, rows, cols):
    return {begin + r * n + c for r in rows for c in cols}


@pytest.mark.parametrize(
    "query_rc, expected",
    [
        # patch_nums (1, 4, 8), kernel 3, query on the last scale (side 8, tokens 17..80).
        # (7, 0), bottom-left corner. Scale 1 (side 4): centre row ((2*7+1)*4)//16 = 3 -> start
        # clamp(2, 0, 1) = 1, rows 1..3 (shifted up); centre col (1*4)//16 = 0 -> cols 0..2 (shifted
        # right). Own scale: rows clamp(6, 0, 5) = 5 -> 5..7, cols 0..2.
        pytest.param(
            (7, 0), {0} | _window(1, 4, range(1, 4), range(3)) | _window(17, 8, range(5, 8), range(3)), id="corner"
        ),
        # (3, 4), interior. Scale 1: centre row (7*4)//16 = 1 -> rows 0..2; centre col (9*4)//16 = 2
        # -> cols 1..3. Own scale: rows 2..4, cols 3..5.
        pytest.param(
            (3, 4), {0} | _window(1, 4, range(3), range(1, 4)) | _window(17, 8, range(2, 5), range(3, 6)), id="interior"
        ),
    ],
)
def test_neighborhood_windows_shift_inward_at_borders(query_rc, expected):
    patch_nums, L = (1, 4, 8), 81
    query = 17 + query_rc[0] * 8 + query_rc[1]
    # q = 0 gives equal logits, so the attention weights are uniform over the visible keys; with
    # v = identity the output row is that distribution over key indices.
    q, k = torch.zeros(1, 1, L, L, dtype=torch.float64), _rand(1, 1, L, L, requires_grad=False)
    v = torch.eye(L, dtype=torch.float64)[None, None]
    weights_L = kernels.neighborhood_attention(q, k, v, patch_nums, kernel_size=3)[0, 0, query]
    assert set(weights_L.nonzero().flatten().tolist()) == expected
    torch.testing.assert_close(weights_L[sorted(expected)], torch.full((len(expected),), 1 / len(expected)).double())
    assert set(naive_neighborhood_keys(patch_nums, 3, query)) == expected


# ----------------------------------------------------------------------------------------------
# Block causality: outputs of scales <= k ignore every token of scales > k


def _perturb_after(t_xLD: torch.Tensor, end: int) -> torch.Tensor:
    """A copy of ``t`` with noise added to the tokens (dim -2) from ``end`` on."""
    t2 = t_xLD.clone()
    t2[..., end:, :] += 3 * torch.randn_like(t2[..., end:, :])
    return t2


def _token_mixing_case(op: str):
    """(fn, token inputs, other inputs) for ``op`` on patch_nums (1, 2, 3, 4); tokens sit on dim -2."""
    L, D = 30, 4
    qkv = [torch.randn(2, 2, L, D, dtype=torch.float64) for _ in range(3)]
    if op == "block_causal_attention":
        return (lambda q, k, v, pns: kernels.block_causal_attention(q, k, v, pns)), qkv, []
    if op == "neighborhood_attention":
        return (lambda q, k, v, pns: kernels.neighborhood_attention(q, k, v, pns, 3)), qkv, []
    if op == "external_attention":
        mems = [torch.randn(2, 5, D, dtype=torch.float64) for _ in range(2)]
        return (lambda q, mk, mv, pns: kernels.external_attention(q, mk, mv, pns)), qkv[:1], mems
    assert op == "ragged_depthwise_conv2d"
    x_BLC, weight, bias = torch.randn(2, L, 3, dtype=torch.float64), torch.randn(3, 3, 3), torch.randn(3)
    return (
        (lambda x, w, b, pns: kernels.ragged_depthwise_conv2d(x, pns, w, b, dilation=2)),
        [x_BLC],
        [weight.double(), bias.double()],
    )


@pytest.mark.parametrize(
    "op", ["block_causal_attention", "neighborhood_attention", "external_attention", "ragged_depthwise_conv2d"]
)
def test_token_mixing_ops_are_block_causal(op):
    patch_nums = (1, 2, 3, 4)
    fn, tokens, others = _token_mixing_case(op)
    out = fn(*tokens, *others, patch_nums)
    for end_k in (1, 5, 14):  # ends of scales 0, 1, 2
        out2 = fn(*(_perturb_after(t, end_k) for t in tokens), *others, patch_nums)
        torch.testing.assert_close(out2[..., :end_k, :], out[..., :end_k, :], rtol=0, atol=0)
        assert not torch.allclose(out2[..., end_k:, :], out[..., end_k:, :])  # the perturbation is seen later


def test_ragged_depthwise_conv2d_reads_nothing_across_scales():
    patch_nums = (1, 2, 3, 4)
    x, w = torch.randn(2, 30, 3, dtype=torch.float64), torch.randn(3, 5, 5, dtype=torch.float64)
    out = kernels.ragged_depthwise_conv2d(x, patch_nums, w)
    x2 = x.clone()
    x2[:, 5:14] += 1.0  # scale 2 only
    changed = (kernels.ragged_depthwise_conv2d(x2, patch_nums, w) != out).any(dim=(0, 2))
    assert changed[5:14].all() and not changed[:5].any() and not changed[14:].any()


def test_gspn_scan_is_causal_along_width_and_chunks_are_independent():
    N, C, H, W, chunk = 1, 2, 3, 8, 3
    x, lam = torch.randn(N, C, H, W, dtype=torch.float64), torch.randn(N, C, H, W, dtype=torch.float64)
    g = kernels.gspn_normalize_gates(torch.randn(N, 3, C, H, W, dtype=torch.float64))
    h = kernels.gspn_scan(x, lam, g)
    for c in range(W - 1):
        x2 = x.clone()
        x2[..., c + 1 :] += 1.0
        torch.testing.assert_close(kernels.gspn_scan(x2, lam, g)[..., : c + 1], h[..., : c + 1], rtol=0, atol=0)
    h_chunked = kernels.gspn_scan(x, lam, g, chunk=chunk)
    x2 = x.clone()
    x2[..., :chunk] += 1.0  # the first chunk only
    h2 = kernels.gspn_scan(x2, lam, g, chunk=chunk)
    torch.testing.assert_close(h2[..., chunk:], h_chunked[..., chunk:], rtol=0, atol=0)
    assert not torch.allclose(h2[..., :chunk], h_chunked[..., :chunk])


# ----------------------------------------------------------------------------------------------
# Low-precision inputs and the 512 px sequence


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_references_keep_the_input_dtype(dtype):
    patch_nums = (1, 2, 3)
    q, k, v = (torch.randn(1, 2, 14, 8, dtype=dtype) for _ in range(3))
    mem = torch.randn(2, 4, 8, dtype=dtype)
    x, w = torch.randn(1, 14, 8, dtype=dtype), torch.randn(8, 3, 3, dtype=dtype)
    outs = [
        kernels.block_causal_attention(q, k, v, patch_nums),
        kernels.neighborhood_attention(q, k, v, patch_nums, 3),
        kernels.external_attention(q, mem, mem, patch_nums),
        kernels.ragged_depthwise_conv2d(x, patch_nums, w),
        kernels.gspn_scan(q, k, kernels.gspn_normalize_gates(torch.stack([v] * 3, dim=1))),
    ]
    for out in outs:
        assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("op", ["block_causal_attention", "neighborhood_attention"])
def test_attention_at_512px_scale_list_is_memory_sane(op):
    # L = 2240: a dense L x L x D tensor would be 80M elements per head; the references build at most
    # 1024 x 2240 logits at a time. Forward and backward must finish in seconds on a laptop CPU.
    L = kernels.ScaleLayout.of(PN_512PX).num_tokens
    assert L == 2240
    q, k, v = (torch.randn(1, 1, L, 16, requires_grad=True) for _ in range(3))
    t0 = time.perf_counter()
    if op == "block_causal_attention":
        out = kernels.block_causal_attention(q, k, v, PN_512PX)
    else:
        out = kernels.neighborhood_attention(q, k, v, PN_512PX, kernel_size=7)
    out.sum().backward()
    elapsed = time.perf_counter() - t0
    assert out.shape == (1, 1, L, 16) and torch.isfinite(q.grad).all()
    assert elapsed < 20, f"{op} at L=2240 took {elapsed:.1f} s"
