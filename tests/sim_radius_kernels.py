"""Host-side emulation of the index math of csrc/cuda/etb_radius_kernels.cu (no GPU needed).

Transcribes, thread by thread, what the CUDA kernels do: the compaction, the cp.async loader
(which thread copies which element, zero-fill at the edges), the double-buffered pipeline over
(column tile, active-unit tile) steps, the mma.sync fragment loads (with the PTX fragment
layouts of m16n8k8 TF32 and m16n8k16 BF16), the FFMA micro-tiles, the |P| r epilogue and the
fixed-order reductions. The result is compared with the float64 formula. It catches indexing
mistakes (wrong fragment element, off-by-one tile edges, a stage read before it was written);
it says nothing about timing, races or the hardware itself.

Run: python tests/sim_radius_kernels.py   (a few seconds; exits 1 on a mismatch)
"""
import itertools
import sys

import numpy as np

THREADS = 256


def compact(s):
    N, h = s.shape
    idx = -np.ones((N, h), np.int64)
    cnt = np.zeros(N, np.int64)
    for b in range(N):
        a = np.nonzero(s[b] != 0)[0]
        idx[b, : len(a)] = a
        cnt[b] = len(a)
    return idx, cnt


def load_stage(As, Bs, w1, w2t, idx_row, cnt, i0, j0, k0, n, m, BM, BN, BK, LDA, LDB, V, written):
    AV, BV = BM // V, BN // V
    assert (BK * AV) % THREADS == 0 and (BK * BV) % THREADS == 0
    for tid in range(THREADS):
        for q in range((BK * AV) // THREADS):
            e = tid + q * THREADS
            row, col = e // AV, (e % AV) * V
            p, j = i0 + row, j0 + col
            valid = p < cnt and j < m
            for v in range(V):
                dst = row * LDA + col + v
                As[dst] = w2t[idx_row[p], j + v] if valid else 0.0
                written["A"].add(dst)
        for q in range((BK * BV) // THREADS):
            e = tid + q * THREADS
            row, col = e // BV, (e % BV) * V
            p, k = i0 + row, k0 + col
            valid = p < cnt and k < n
            for v in range(V):
                dst = row * LDB + col + v
                Bs[dst] = w1[idx_row[p], k + v] if valid else 0.0
                written["B"].add(dst)


def rnd_tf32(x):
    x = np.float32(x)
    i = np.array(x, np.float32).view(np.int32)
    i = (i + 0x1000) & ~0x1FFF
    return np.array(i, np.int32).view(np.float32)[()]


def rnd_bf16(x):
    x = np.array(np.float32(x))
    i = x.view(np.uint32).astype(np.uint64)
    i = ((i + 0x7FFF + ((i >> 16) & 1)) >> 16) << 16  # round to nearest even
    return np.array(i.astype(np.uint32)).view(np.float32)[()]


def frag_row(a, g, hlf):
    """Row (within the warp's 64) feeding mma tile a's fragment row g + 8 * hlf (as the kernel)."""
    return (a >> 1) * 32 + 4 * g + 2 * (a & 1) + hlf


def frag_col(c, q):
    """Column (within the warp's 32) feeding mma tile c's fragment column q (as the kernel)."""
    return 4 * q + c


def mma_kernel_cta(b, by, w1, w2t, idx, cnt_all, r, out, n, h, m, bf16, V):
    BM, BN, BK, WM, WN, S = 128, 128, 32, 64, 32, 3
    MT, NT, WARPS_N = WM // 16, WN // 8, BN // WN
    LDA = LDB = BM + (4 if bf16 else 8)
    j0 = by * BM
    cnt = cnt_all[b]
    if cnt == 0:
        for t in range(BM):
            if j0 + t < m:
                out[b, j0 + t] = 0.0
        return
    idx_row = idx[b]
    KT = (cnt + BK - 1) // BK
    NKT = (n + BN - 1) // BN
    steps = KT * NKT
    As = [np.full(BK * LDA, np.nan, np.float32) for _ in range(S)]
    Bs = [np.full(BK * LDB, np.nan, np.float32) for _ in range(S)]
    tag = [None] * S  # which pipeline step each slot holds
    acc = np.zeros((8, 32, MT, NT, 4), np.float32)
    rowsum = np.zeros((8, 32, MT, 2), np.float32)

    def issue(s):
        slot = s % S
        As[slot][:] = np.nan
        Bs[slot][:] = np.nan
        load_stage(As[slot], Bs[slot], w1, w2t, idx_row, cnt, (s % KT) * BK, j0, (s // KT) * BN, n, m, BM, BN, BK,
                   LDA, LDB, V, {"A": set(), "B": set()})
        tag[slot] = s

    for s in range(S - 1):
        if s < steps:
            issue(s)
    for step in range(steps):
        # (wait + __syncthreads) then refill the slot of step - 1, then compute step
        if step + S - 1 < steps:
            assert (step + S - 1) % S != step % S
            issue(step + S - 1)
        assert tag[step % S] == step, "computing a slot that does not hold this step"
        A_s, B_s = As[step % S], Bs[step % S]
        for warp in range(8):
            warp_m, warp_n = warp // WARPS_N, warp % WARPS_N
            wm0, wn0 = warp_m * WM, warp_n * WN
            # each lane's 128-bit loads: As[k * LDA + wm0 + 4g + {0..3}] (+ 32), Bs[k * LDB + wn0 + 4g + {0..3}]
            def lda4(k, g, off):
                base = k * LDA + wm0 + 4 * g + off
                return A_s[base:base + 4]

            def ldb4(k, g):
                base = k * LDB + wn0 + 4 * g
                return B_s[base:base + 4]

            if not bf16:
                for kk in range(0, BK, 8):
                    for a, c in itertools.product(range(MT), range(NT)):
                        Am = np.zeros((16, 8), np.float32)
                        Bm = np.zeros((8, 8), np.float32)
                        for lane in range(32):
                            g, t4 = lane >> 2, lane & 3
                            off, q = (0 if a < 2 else 32), 2 * (a & 1)
                            x0, x1 = lda4(kk + t4, g, off), lda4(kk + t4 + 4, g, off)
                            # PTX m16n8k8 tf32 layouts: a0 (g,t) a1 (g+8,t) a2 (g,t+4) a3 (g+8,t+4); b0 (t,g) b1 (t+4,g)
                            Am[g, t4], Am[g + 8, t4], Am[g, t4 + 4], Am[g + 8, t4 + 4] = x0[q], x0[q + 1], x1[q], x1[q + 1]
                            Bm[t4, g], Bm[t4 + 4, g] = ldb4(kk + t4, g)[c], ldb4(kk + t4 + 4, g)[c]
                        # the fragments must hold exactly the elements the permutation says
                        for gg, hlf in itertools.product(range(8), range(2)):
                            srow = wm0 + frag_row(a, gg, hlf)
                            for t in range(8):
                                v = A_s[(kk + t) * LDA + srow]
                                assert Am[gg + 8 * hlf, t] == v or (np.isnan(v) and np.isnan(Am[gg + 8 * hlf, t]))
                        Cm = Am.astype(np.float64) @ Bm.astype(np.float64)
                        for lane in range(32):
                            g, t4 = lane >> 2, lane & 3
                            acc[warp, lane, a, c] += np.float32([Cm[g, 2 * t4], Cm[g, 2 * t4 + 1],
                                                                 Cm[g + 8, 2 * t4], Cm[g + 8, 2 * t4 + 1]])
            else:
                for kk in range(0, BK, 16):
                    for a, c in itertools.product(range(MT), range(NT)):
                        Am = np.zeros((16, 16), np.float32)
                        Bm = np.zeros((16, 8), np.float32)
                        for lane in range(32):
                            g, t4 = lane >> 2, lane & 3
                            kl = kk + 2 * t4
                            ks = [kl, kl + 1, kl + 8, kl + 9]
                            off, q = (0 if a < 2 else 32), 2 * (a & 1)
                            x = [lda4(k, g, off) for k in ks]
                            bv = [ldb4(k, g) for k in ks]
                            # PTX m16n8k16 bf16: reg0 (g, 2t..2t+1) reg1 (g+8, 2t..) reg2 (g, 2t+8..) reg3 (g+8, 2t+8..)
                            Am[g, 2 * t4], Am[g, 2 * t4 + 1] = rnd_bf16(x[0][q]), rnd_bf16(x[1][q])
                            Am[g + 8, 2 * t4], Am[g + 8, 2 * t4 + 1] = rnd_bf16(x[0][q + 1]), rnd_bf16(x[1][q + 1])
                            Am[g, 2 * t4 + 8], Am[g, 2 * t4 + 9] = rnd_bf16(x[2][q]), rnd_bf16(x[3][q])
                            Am[g + 8, 2 * t4 + 8], Am[g + 8, 2 * t4 + 9] = rnd_bf16(x[2][q + 1]), rnd_bf16(x[3][q + 1])
                            Bm[2 * t4, g], Bm[2 * t4 + 1, g] = rnd_bf16(bv[0][c]), rnd_bf16(bv[1][c])
                            Bm[2 * t4 + 8, g], Bm[2 * t4 + 9, g] = rnd_bf16(bv[2][c]), rnd_bf16(bv[3][c])
                        Cm = Am.astype(np.float64) @ Bm.astype(np.float64)
                        for lane in range(32):
                            g, t4 = lane >> 2, lane & 3
                            acc[warp, lane, a, c] += np.float32([Cm[g, 2 * t4], Cm[g, 2 * t4 + 1],
                                                                 Cm[g + 8, 2 * t4], Cm[g + 8, 2 * t4 + 1]])
        if step % KT == KT - 1:
            k0 = (step // KT) * BN
            for warp, lane in itertools.product(range(8), range(32)):
                g, t4 = lane >> 2, lane & 3
                wn0 = (warp % WARPS_N) * WN
                for c, e in itertools.product(range(NT), range(2)):
                    k = k0 + wn0 + frag_col(c, 2 * t4 + e)
                    if k < n:
                        rk = r[b, k]
                        for a in range(MT):
                            rowsum[warp, lane, a, 0] += abs(acc[warp, lane, a, c, e]) * rk
                            rowsum[warp, lane, a, 1] += abs(acc[warp, lane, a, c, 2 + e]) * rk
            acc[:] = 0
    red = np.full((WARPS_N, BM), np.nan, np.float32)
    for warp in range(8):
        warp_m, warp_n = warp // WARPS_N, warp % WARPS_N
        wm0 = warp_m * WM
        for a, hlf in itertools.product(range(MT), range(2)):
            v = rowsum[warp, :, a, hlf].copy()
            v = v + v[np.arange(32) ^ 1]
            v = v + v[np.arange(32) ^ 2]
            for lane in range(32):
                g, t4 = lane >> 2, lane & 3
                if t4 == 0:
                    red[warp_n, wm0 + frag_row(a, g, hlf)] = v[lane]
    assert not np.isnan(red).any(), "reduction buffer not fully written"
    for row in range(BM):
        v = np.float32(0)
        for w in range(WARPS_N):
            v += red[w, row]
        if j0 + row < m:
            out[b, j0 + row] = v


def ffma_kernel_cta(b, by, w1, w2t, idx, cnt_all, r, out, n, h, m, dtype, BM, BN, BK, V):
    pad = 16 // np.dtype(dtype).itemsize
    LDA, LDB = BM + pad, BN + pad
    TM, TN = BM // 16, BN // 16
    HM, HN = TM // 2, TN // 2
    j0 = by * BM
    cnt = cnt_all[b]
    if cnt == 0:
        for t in range(BM):
            if j0 + t < m:
                out[b, j0 + t] = 0
        return
    KT = (cnt + BK - 1) // BK
    NKT = (n + BN - 1) // BN
    steps = KT * NKT
    As = [np.full(BK * LDA, np.nan, dtype) for _ in range(2)]
    Bs = [np.full(BK * LDB, np.nan, dtype) for _ in range(2)]
    acc = np.zeros((THREADS, TM, TN), dtype)
    rowsum = np.zeros((THREADS, TM), dtype)
    w = [{"A": set(), "B": set()}, {"A": set(), "B": set()}]
    load_stage(As[0], Bs[0], w1, w2t, idx[b], cnt, 0, j0, 0, n, m, BM, BN, BK, LDA, LDB, V, w[0])
    tx = np.arange(THREADS) % 16
    ty = np.arange(THREADS) // 16
    rows_of = lambda t: [ty[t] * HM + a for a in range(HM)] + [BM // 2 + ty[t] * HM + a for a in range(HM)]  # noqa
    cols_of = lambda t: [tx[t] * HN + c for c in range(HN)] + [BN // 2 + tx[t] * HN + c for c in range(HN)]  # noqa
    for step in range(steps):
        st = step & 1
        if step + 1 < steps:
            nx = step + 1
            kt, it = nx // KT, nx % KT
            load_stage(As[st ^ 1], Bs[st ^ 1], w1, w2t, idx[b], cnt, it * BK, j0, kt * BN, n, m, BM, BN, BK, LDA,
                       LDB, V, w[st ^ 1])
        A2 = As[st].reshape(BK, LDA)
        B2 = Bs[st].reshape(BK, LDB)
        for t in range(THREADS):
            av = A2[:, rows_of(t)]  # (BK, TM)
            bv = B2[:, cols_of(t)]
            acc[t] += (av.astype(np.float64).T @ bv.astype(np.float64)).astype(dtype)
        if step % KT == KT - 1:
            k0 = (step // KT) * BN
            for t in range(THREADS):
                for ci, c in enumerate(cols_of(t)):
                    k = k0 + c
                    if k < n:
                        rowsum[t] += np.abs(acc[t][:, ci]) * r[b, k]
            acc[:] = 0
    for t in range(THREADS):
        if tx[t] == 0:
            half = [u for u in range(THREADS) if ty[u] == ty[t]]
            assert len(half) == 16 and all(u // 32 == t // 32 for u in half), "shuffle group leaves the warp"
            tot = rowsum[half].sum(0)
            for ai, row in enumerate(rows_of(t)):
                if j0 + row < m:
                    out[b, j0 + row] = tot[ai]


def run_case(N, n, h, m, path, V, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((h, n)) / np.sqrt(n)).astype(dtype)
    w2 = (rng.standard_normal((m, h)) / np.sqrt(h)).astype(dtype)
    r = rng.random((N, n)).astype(dtype)
    s = (rng.random((N, h)) < 0.6).astype(dtype)
    s[0] = 0 if N > 2 else s[0]
    idx, cnt = compact(s)
    w2t = np.ascontiguousarray(w2.T)
    out = np.full((N, m), np.nan, dtype)
    if path == "ffma":
        BM, BN, BK = (128, 128, 16) if dtype == np.float32 else (64, 64, 16)
        for b in range(N):
            for by in range((m + BM - 1) // BM):
                ffma_kernel_cta(b, by, w1, w2t, idx, cnt, r, out, n, h, m, dtype, BM, BN, BK, V)
    else:
        w1k, w2tk = w1, w2t
        if path == "tf32":  # the host rounds both operands once (round_to_tf32); the kernel reads the bits
            w1k = np.vectorize(rnd_tf32, otypes=[np.float32])(w1)
            w2tk = np.vectorize(rnd_tf32, otypes=[np.float32])(w2t)
        for b in range(N):
            for by in range((m + 127) // 128):
                mma_kernel_cta(b, by, w1k, w2tk, idx, cnt, r, out, n, h, m, path == "bf16", V)
    P = (w2.astype(np.float64)[None] * s.astype(np.float64)[:, None, :]) @ w1.astype(np.float64)
    ref = (np.abs(P) * r.astype(np.float64)[:, None, :]).sum(-1)
    assert not np.isnan(out).any(), "unwritten outputs"
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)
    tol = {"ffma": 1e-5 if dtype == np.float32 else 1e-13, "tf32": 5e-3, "bf16": 3e-2}[path]
    ok = err <= tol
    print(f"  {path:5s} V={V} {np.dtype(dtype).name:7s} N={N} n={n} h={h} m={m}: rel err {err:.2e} "
          f"{'ok' if ok else 'MISMATCH'}")
    return ok


def sim_backward(N, n, h, m, chunk, seed=0):
    """The chunked radius backward of csrc/cuda/etb_cuda.cpp (radius_bwd_cuda), op by op in torch
    on the CPU, with compact_active / gather_sum emulated; compared with autograd of the formula."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(h, n, generator=g, dtype=torch.float64)
    w2 = torch.randn(m, h, generator=g, dtype=torch.float64)
    r = torch.rand(N, n, generator=g, dtype=torch.float64)
    s = (torch.rand(N, h, generator=g) < 0.5).double()
    s[0] = 0
    G = torch.randn(N, m, generator=g, dtype=torch.float64)
    idx_np, cnt_np = compact(s.numpy())
    idx = torch.from_numpy(idx_np).int()
    pos = torch.full((N, h), -1, dtype=torch.int32)
    for b in range(N):
        for p_ in range(int(cnt_np[b])):
            pos[b, idx_np[b, p_]] = p_
    dr = torch.zeros(N, n, dtype=torch.float64)
    dw1 = torch.zeros(h, n, dtype=torch.float64)
    dw2t = torch.zeros(h, m, dtype=torch.float64)
    w2t = w2.t().contiguous()

    def gather_sum(x, pos_c, out, C, hmax, cols):
        for i in range(h):
            acc = torch.zeros(cols, dtype=x.dtype)
            for b in range(C):
                p_ = int(pos_c[b, i])
                if p_ >= 0:
                    acc += x[b, p_]
            out[i] += acc

    for b0 in range(0, N, chunk):
        C = min(chunk, N - b0)
        hmax = int(cnt_np[b0:b0 + C].max())
        if hmax == 0:
            continue
        idx_c = idx[b0:b0 + C, :hmax].contiguous()
        pad = idx_c.lt(0).unsqueeze(-1)
        flat = idx_c.clamp_min(0).reshape(C * hmax)
        wa2 = w2t.index_select(0, flat).view(C, hmax, m).masked_fill_(pad, 0)
        wa1 = w1.index_select(0, flat).view(C, hmax, n).masked_fill_(pad, 0)
        g_c, r_c = G[b0:b0 + C], r[b0:b0 + C]
        P = torch.bmm(wa2.transpose(1, 2), wa1)
        T = P.sign()
        P.abs_()
        dr[b0:b0 + C] = torch.bmm(g_c.unsqueeze(1), P).squeeze(1)
        T.mul_(g_c.unsqueeze(2)).mul_(r_c.unsqueeze(1))
        pos_c = pos[b0:b0 + C]
        gather_sum(torch.bmm(wa1, T.transpose(1, 2)), pos_c, dw2t, C, hmax, m)
        gather_sum(torch.bmm(wa2, T), pos_c, dw1, C, hmax, n)
    rr, a1, a2 = (t.clone().requires_grad_() for t in (r, w1, w2))
    rad = (((a2 * s[:, None, :]) @ a1).abs() * rr[:, None, :]).sum(-1)
    want = torch.autograd.grad((rad * G).sum(), (rr, a1, a2))
    errs = [(x - y).abs().max().item() / (y.abs().max().item() + 1e-30)
            for x, y in zip((dr, dw1, dw2t.t()), want)]
    ok = max(errs) < 1e-12
    print(f"  backward chunk={chunk} N={N} n={n} h={h} m={m}: rel errs dr/dw1/dw2 "
          f"{' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'MISMATCH'}")
    return ok


def main():
    ok = True
    ok &= sim_backward(7, 11, 9, 5, chunk=3)
    ok &= sim_backward(7, 11, 9, 5, chunk=7)
    # one tile edge each way: n, m past 128 (2 column / row tiles, partial), h past 32 (2 unit tiles)
    ok &= run_case(3, 130, 37, 131, "tf32", 1)
    ok &= run_case(2, 132, 40, 132, "tf32", 4)
    ok &= run_case(3, 130, 37, 131, "bf16", 1)
    ok &= run_case(2, 132, 33, 4, "bf16", 4)
    ok &= run_case(3, 130, 19, 131, "ffma", 1)
    ok &= run_case(2, 132, 17, 136, "ffma", 4)
    ok &= run_case(3, 66, 17, 67, "ffma", 1, dtype=np.float64)
    ok &= run_case(2, 66, 20, 66, "ffma", 2, dtype=np.float64)
    print("sim_radius_kernels:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
