// A second AMX route, measured in docs/attention.md: the transposed formulation. Per task (one head × 64 queries):
//   Sᵀ[L, 64] = k·qᵀ (brgemm, keys as M in blocks of 256, packed qᵀ as B), softmax down the columns (max/exp/sum
//   vectorised over the 64 queries), P written straight into the VNNI layout (two keys' bf16 per 32-bit lane), then
//   Oᵀ[d, 64] = vᵀ·Pᵀ (one brgemm, K = L) and out = bf16(Oᵀᵀ / sum). No key packing; 4× fewer, larger q·kᵀ calls.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace AttentionBench;

/// <summary>The transposed AMX route (see the file comment); not adopted, kept for the measurement.</summary>
public static unsafe class AmxTransposedAttention
{
    private const sbyte BFloat16 = 15;
    private const int Queries = 64;      // N of both GEMMs: a packed B's leading dimension (16, 32, 48 or 64)
    private const int KeyBlock = 256;    // M of k·qᵀ per call

    public static bool Supports(Tensor q, Tensor k, Tensor v) =>
        AmxBlockedAttention.Supports(q, k, v) && q.shape[2] % 16 == 0;

    public static Tensor Forward(Tensor q, Tensor k, Tensor v)
    {
        if (!Supports(q, k, v)) throw new ArgumentException("AmxTransposedAttention: unsupported inputs (bf16 CPU, AMX, even d, N and L multiples of 16).");
        using var scope = NewDisposeScope();
        long b = q.shape[0], heads = q.shape[1], n = q.shape[2], d = q.shape[3], l = k.shape[2], bh = b * heads;
        float scale = (float)(1 / Math.Sqrt(d));
        var q3 = q.reshape(bh, n, d).contiguous();
        var k3 = k.reshape(bh, l, d).contiguous();
        var v3 = v.reshape(bh, l, d).contiguous();
        var vT = empty([bh, d * l], dtype: ScalarType.BFloat16);          // vᵀ per head, [d, L]
        var output = empty([b, heads, n, d], dtype: ScalarType.BFloat16);
        var p = new Plan((ushort*)AmxBlockedAttention.Data(q3), (ushort*)AmxBlockedAttention.Data(k3),
            (ushort*)AmxBlockedAttention.Data(v3), (ushort*)AmxBlockedAttention.Data(vT), (ushort*)AmxBlockedAttention.Data(output),
            n, l, d, (n + Queries - 1) / Queries, scale);
        var options = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, get_num_threads()) };
        Parallel.For(0L, bh, options, hd => TransposeV(p, hd));
        Parallel.For(0L, bh * p.BlocksPerHead, options,
            () => new Workspace(l, d),
            (task, _, ws) => { RunTask(p, task, ws); return ws; },
            ws => ws.Dispose());
        return output.MoveToOuterDisposeScope();
    }

    private sealed class Plan(ushort* q, ushort* k, ushort* v, ushort* vT, ushort* output, long n, long l, long d, long blocksPerHead, float scale)
    {
        public readonly ushort* Q = q, K = k, V = v, VT = vT, Out = output;
        public readonly long N = n, L = l, D = d, BlocksPerHead = blocksPerHead;
        public readonly float Scale = scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TransposeV(Plan p, long hd)
    {
        ushort* vin = p.V + hd * p.L * p.D, vout = p.VT + hd * p.L * p.D;
        for (long j = 0; j < p.L; j++)
            for (long c = 0; c < p.D; c++)
                vout[c * p.L + j] = vin[j * p.D + c];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunTask(Plan p, long task, Workspace ws)
    {
        long l = p.L, d = p.D;
        long hd = task / p.BlocksPerHead, q0 = task % p.BlocksPerHead * Queries, nq = Math.Min(Queries, p.N - q0);
        // a. qᵀ of these queries [d, nq] → VNNI.
        ushort* qIn = p.Q + (hd * p.N + q0) * d;
        for (long i = 0; i < nq; i++)
            for (long c = 0; c < d; c++)
                ws.Tmp[c * nq + i] = qIn[i * d + c];
        AmxBlockedAttention.Pack(d, nq, nq, nq, BFloat16, BFloat16, ws.Tmp, ws.QPacked);
        // b. Sᵀ = k·qᵀ [L, nq] fp32, keys in blocks of 256 as M.
        ushort* kHead = p.K + hd * l * d;
        for (long k0 = 0; k0 < l; k0 += KeyBlock)
        {
            long mb = Math.Min(KeyBlock, l - k0);
            AmxBlockedAttention.Brgemm(mb, nq, d, d, nq, nq, 0, kHead + k0 * d, ws.QPacked, ws.ST + k0 * nq, 1);
        }
        // c. Column softmax into P (VNNI: [L/2][nq][2]) and the per-query sums.
        SoftmaxColumns(ws.ST, (uint*)ws.P, ws.Sum, (int)l, (int)nq, p.Scale);
        // d. Oᵀ = vᵀ·Pᵀ [d, nq] fp32.
        AmxBlockedAttention.Brgemm(d, nq, l, l, nq, nq, 0, p.VT + hd * l * d, ws.P, ws.OT, 1);
        // e. out[q0 + i, c] = bf16(Oᵀ[c, i] / sum[i])
        ushort* outRows = p.Out + (hd * p.N + q0) * d;
        for (long i = 0; i < nq; i++)
        {
            float inv = 1 / ws.Sum[i];
            for (long c = 0; c < d; c++)
                outRows[i * d + c] = (ushort)((BitConverter.SingleToUInt32Bits(ws.OT[c * nq + i] * inv) + 0x8000) >> 16);
        }
    }

    /// <summary>s: [L, nq] fp32 rows of nq queries; writes p as [L/2][nq] lanes of (bf16 key 2j | bf16 key 2j+1 << 16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SoftmaxColumns(float* s, uint* p, float* sums, int l, int nq, float scale)
    {
        int vecs = nq / 16;
        var max = stackalloc Vector512<float>[4];
        var shift = stackalloc Vector512<float>[4];
        var sum = stackalloc Vector512<float>[4];
        for (int c = 0; c < vecs; c++) { max[c] = Vector512.Create(float.NegativeInfinity); sum[c] = Vector512<float>.Zero; }
        for (int j = 0; j < l; j++)
            for (int c = 0; c < vecs; c++)
                max[c] = Vector512.MaxNative(max[c], Vector512.Load(s + j * nq + c * 16));
        float a = scale * 1.44269504f;
        var va = Vector512.Create(a);
        for (int c = 0; c < vecs; c++) shift[c] = -max[c] * va;
        var half = Vector512.Create(0x8000u);
        var magic = Vector512.Create(12582912f);
        var floor = Vector512.Create(-125f);
        var c4 = Vector512.Create(9.6181291e-3f); var c3 = Vector512.Create(5.5504109e-2f);
        var c2 = Vector512.Create(0.24022651f); var c1 = Vector512.Create(0.69314718f);
        for (int j = 0; j < l; j += 2)
        {
            for (int c = 0; c < vecs; c++)
            {
                var e0 = (Exp2(Vector512.FusedMultiplyAdd(Vector512.Load(s + j * nq + c * 16), va, shift[c]), magic, floor, c4, c3, c2, c1).AsUInt32() + half) >> 16;
                var e1 = (Exp2(Vector512.FusedMultiplyAdd(Vector512.Load(s + (j + 1) * nq + c * 16), va, shift[c]), magic, floor, c4, c3, c2, c1).AsUInt32() + half) >> 16;
                sum[c] += (e0 << 16).AsSingle() + (e1 << 16).AsSingle();
                (e0 | (e1 << 16)).Store(p + (j / 2) * nq + c * 16);
            }
        }
        for (int c = 0; c < vecs; c++) sum[c].Store(sums + c * 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Exp2(Vector512<float> t, Vector512<float> magic, Vector512<float> floor,
        Vector512<float> c4, Vector512<float> c3, Vector512<float> c2, Vector512<float> c1)
    {
        t = Vector512.MaxNative(t, floor);
        var shifted = t + magic;
        var f = t - (shifted - magic);
        var poly = Vector512.FusedMultiplyAdd(c4, f, c3);
        poly = Vector512.FusedMultiplyAdd(poly, f, c2);
        poly = Vector512.FusedMultiplyAdd(poly, f, c1);
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512<float>.One);
        return (poly.AsInt32() + (shifted.AsInt32() << 23)).AsSingle();
    }

    private sealed class Workspace : IDisposable
    {
        public readonly float* ST, OT, Sum;
        public readonly ushort* P, Tmp, QPacked;

        public Workspace(long l, long d)
        {
            ST = (float*)NativeMemory.AlignedAlloc((nuint)(l * Queries * 4), 64);
            P = (ushort*)NativeMemory.AlignedAlloc((nuint)(l * Queries * 2), 64);
            OT = (float*)NativeMemory.AlignedAlloc((nuint)(d * Queries * 4), 64);
            Sum = (float*)NativeMemory.AlignedAlloc(Queries * 4, 64);
            Tmp = (ushort*)NativeMemory.AlignedAlloc((nuint)(d * Queries * 2), 64);
            QPacked = (ushort*)NativeMemory.AlignedAlloc((nuint)(d * Queries * 2), 64);
        }

        public void Dispose()
        {
            NativeMemory.AlignedFree(ST); NativeMemory.AlignedFree(P); NativeMemory.AlignedFree(OT);
            NativeMemory.AlignedFree(Sum); NativeMemory.AlignedFree(Tmp); NativeMemory.AlignedFree(QPacked);
            AmxBlockedAttention.BrgemmRelease(1);
        }
    }
}
