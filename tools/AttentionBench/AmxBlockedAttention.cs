// The AMX-blocked bf16 attention route measured in docs/attention.md and NOT adopted: on this machine its CPU time
// equals libtorch's SDPA for the transformer's self-attention and doubles it for the VAE's mid-block attention.
// Kept here, outside the library, so the measurement can be repeated. It calls libtorch's exported oneDNN
// micro-kernel wrappers through C++ symbols; a wrong call ends the process, so it checks everything first.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace AttentionBench;

/// <summary>
/// bf16 attention on the CPU, blocked over query rows, with AMX GEMMs through libtorch's exported oneDNN micro-kernel
/// wrappers (<c>at::native::cpublas::brgemm</c>/<c>pack</c>, the ones libtorch's own flash attention calls) and the
/// softmax in C#.
/// <para>
/// Why: libtorch's CPU SDPA spends about 60 % of its time outside its GEMMs (perf, (1, 16, 4096, 72) bf16): an
/// online softmax over 512-key blocks with an fp32 exp per score. Here each task is one head × R query rows against
/// all L keys at once, so the softmax runs once per row (no running-max rescaling), fused in one pass after the
/// max: exp by a degree-4 polynomial (≤ 4.3e-5 relative, far below the bf16 rounding of the probabilities that
/// follows in SDPA too), rounded to bf16, summed. Scores are bf16×bf16 products accumulated in fp32 (AMX), never
/// rounded to bf16 — rounding them is what made the plain bf16-matmul route 10× less accurate (README).
/// </para>
/// <para>
/// Per task: S[R, L] fp32 = Q·Kᵀ (brgemm per 64-key chunk of the packed keys) → per row max, exp((s − max)/√d) as
/// bf16 into P[R, L] and its sum → O[R, d'] fp32 = P·V (one brgemm per ≤ 64-column chunk of the packed values,
/// K = L) → out = bf16(O / sum). The 4096×4096 scores never exist for more than R rows of one head per thread
/// (R·L·6 bytes ≈ 1.5 MB, inside a core's L2).
/// </para>
/// </summary>
public static unsafe class AmxBlockedAttention
{
    private const sbyte BFloat16 = 15;          // c10::ScalarType::BFloat16
    private const int KeyChunk = 64;            // packed B's leading dimension must be 16, 32, 48 or 64 (oneDNN ukernel)

    /// <summary>Query rows per task; null: R·L·6 bytes ≈ 1.5 MB (S fp32 + P bf16 inside a core's L2).</summary>
    public static long? RowsOverride { get; set; }

    /// <summary>Extra fp32 elements after each S row (P rows get twice as many bf16): 16 = one cache line, so that
    /// rows L·4 bytes apart (a multiple of 4 KB) do not all fall into the same L1 sets.</summary>
    public static long RowPad { get; set; } = 16;

    internal static readonly delegate* unmanaged<long, long, long, long, long, long, byte, void*, void*, float*, byte, void> Brgemm;
    internal static readonly delegate* unmanaged<long, long, long, long, sbyte, sbyte, void*, void*, void> Pack;
    internal static readonly delegate* unmanaged<byte, void> BrgemmRelease;

    /// <summary>True when libtorch exports the micro-kernels and oneDNN can pack bf16 for AMX on this CPU.</summary>
    public static bool IsAvailable { get; }

    static AmxBlockedAttention()
    {
        PixArtSharp.TorchRuntime.EnsureLoaded();
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64 || !Vector512.IsHardwareAccelerated)
            return;
        foreach (var name in new[] { "libtorch_cpu.so", Path.Combine(AppContext.BaseDirectory, "libtorch_cpu.so") })
        {
            if (!NativeLibrary.TryLoad(name, out var lib)) continue;
            // Itanium C++ ABI names of at::native::cpublas::{brgemm(…, BFloat16 const*, BFloat16 const*, float*, bool),
            // pack(long, long, long, long, ScalarType, ScalarType, void const*, void*), could_pack(ScalarType),
            // brgemm_release(bool)}, exported by libtorch 2.10's libtorch_cpu.so.
            if (NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas6brgemmEllllllbPKN3c108BFloat16ES5_Pfb", out var brgemm) &&
                NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas4packEllllN3c1010ScalarTypeES3_PKvPv", out var pack) &&
                NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas10could_packEN3c1010ScalarTypeE", out var couldPack) &&
                NativeLibrary.TryGetExport(lib, "_ZN2at6native7cpublas14brgemm_releaseEb", out var release))
            {
                Brgemm = (delegate* unmanaged<long, long, long, long, long, long, byte, void*, void*, float*, byte, void>)brgemm;
                Pack = (delegate* unmanaged<long, long, long, long, sbyte, sbyte, void*, void*, void>)pack;
                BrgemmRelease = (delegate* unmanaged<byte, void>)release;
                // could_pack(bf16) is oneDNN's "effective ISA ≥ avx512_core_amx" (and mkldnn enabled). Without AMX the
                // VNNI brgemm would not run (libtorch then throws, which through this call ends the process).
                IsAvailable = ((delegate* unmanaged<sbyte, byte>)couldPack)(BFloat16) != 0;
            }
            return;
        }
    }

    /// <summary>Whether <see cref="Forward"/> takes these inputs (else the caller uses SDPA).</summary>
    public static bool Supports(Tensor q, Tensor k, Tensor v)
    {
        if (q.dtype != ScalarType.BFloat16 || k.dtype != ScalarType.BFloat16 || v.dtype != ScalarType.BFloat16) return false;
        if (q.device_type != DeviceType.CPU || q.ndim != 4 || k.ndim != 4 || v.ndim != 4) return false;
        if (!IsAvailable) return false;
        long b = q.shape[0], h = q.shape[1], d = q.shape[3], l = k.shape[2];
        if (k.shape[0] != b || v.shape[0] != b || k.shape[1] != h || v.shape[1] != h || k.shape[3] != d || v.shape[3] != d || v.shape[2] != l)
            return false;
        // VNNI pairs rows of B: d (the K of q·kᵀ) must be even; L (the K of p·v) and each key chunk a multiple of 16.
        return d % 2 == 0 && d <= 1024 && l % 16 == 0 && l > 0 && q.shape[2] > 0 && l <= (1 << 20);
    }

    /// <summary>softmax(q·kᵀ/√d)·v for bf16 [B, heads, N, d] CPU tensors that <see cref="Supports"/> accepts.</summary>
    public static Tensor Forward(Tensor q, Tensor k, Tensor v)
    {
        if (!Supports(q, k, v))
            throw new ArgumentException("AmxBlockedAttention takes bf16 CPU tensors [B, heads, N, d] with even d and a key count that is a multiple of 16, on a CPU with AMX; use SDPA.");
        using var scope = NewDisposeScope();
        long b = q.shape[0], heads = q.shape[1], n = q.shape[2], d = q.shape[3], l = k.shape[2];
        long bh = b * heads;
        long dPad = (d + 15) / 16 * 16;                  // value columns padded to whole 16-column VNNI blocks
        float scale = (float)(1 / Math.Sqrt(d));

        // 1. Pack keys and values into oneDNN's VNNI layout, per head, in C# threads: libtorch ops here (transposes,
        //    padding) would each be an OpenMP region, whose barriers spin while a thread is descheduled — measured
        //    as 57 % of this route's CPU time at load 20 before it packed from its own buffers.
        //    Keys: kᵀ in 64-key chunks [d, 64] (the last one [d, L mod 64]), each packed contiguously.
        //    Values: v padded with zeros to d' columns, in ≤ 64-column chunks [L, c] packed contiguously (K = L).
        var q3 = q.reshape(bh, n, d).contiguous();
        var k3 = k.reshape(bh, l, d).contiguous();
        var v3 = v.reshape(bh, l, d).contiguous();
        var kPacked = empty([bh, l * d], dtype: ScalarType.BFloat16);
        var vPacked = empty([bh, l * dPad], dtype: ScalarType.BFloat16);
        long rows = RowsOverride ?? Math.Clamp(1_572_864 / (6 * l) / 16 * 16, 16, 256);   // R: S (fp32) + P (bf16) of R rows ≈ 1.5 MB
        var output = empty([b, heads, n, d], dtype: ScalarType.BFloat16);
        var plan = new Plan((ushort*)Data(q3), (ushort*)Data(k3), (ushort*)Data(v3), (ushort*)Data(kPacked),
            (ushort*)Data(vPacked), (ushort*)Data(output), n, l, d, dPad, rows, (n + rows - 1) / rows, scale,
            Chunks(l), Chunks(dPad));
        var options = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, get_num_threads()) };
        Parallel.For(0L, bh, options,
            () => (nint)NativeMemory.AlignedAlloc((nuint)(Math.Max(d, l) * KeyChunk * 2), 64),
            (hd, _, buffer) => { PackHead(plan, hd, (ushort*)buffer); return buffer; },
            buffer => NativeMemory.AlignedFree((void*)buffer));

        // 2. Tasks of R query rows × one head, spread over the threads by .NET's work stealing.
        Parallel.For(0L, bh * plan.BlocksPerHead, options,
            () => new Workspace(rows, l, dPad),
            (task, _, ws) => { RunTask(plan, task, ws); return ws; },
            ws => ws.Dispose());
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>Pointers and sizes of one call (the tensors stay alive in the caller's dispose scope).</summary>
    private sealed class Plan(ushort* q, ushort* k, ushort* v, ushort* kPacked, ushort* vPacked, ushort* output,
        long n, long l, long d, long dPad, long rows, long blocksPerHead, float scale,
        (long Start, long Size)[] keyChunks, (long Start, long Size)[] valueChunks)
    {
        public readonly ushort* Q = q, K = k, V = v, KPacked = kPacked, VPacked = vPacked, Out = output;
        public readonly long N = n, L = l, D = d, DPad = dPad, Rows = rows, BlocksPerHead = blocksPerHead;
        public readonly float Scale = scale;
        public readonly (long Start, long Size)[] KeyChunks = keyChunks, ValueChunks = valueChunks;
    }

    /// <summary>Packs head hd's keys (kᵀ per key chunk) and values (zero-padded column chunks) through tmp.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackHead(Plan p, long hd, ushort* tmp)
    {
        long l = p.L, d = p.D;
        ushort* kIn = p.K + hd * l * d, kOut = p.KPacked + hd * l * d;
        foreach (var (start, size) in p.KeyChunks)
        {
            for (long j = 0; j < size; j++)                 // [size, d] rows → [d, size]
                for (long c = 0; c < d; c++)
                    tmp[c * size + j] = kIn[(start + j) * d + c];
            Pack(d, size, size, size, BFloat16, BFloat16, tmp, kOut + start * d);
        }
        ushort* vIn = p.V + hd * l * d, vOut = p.VPacked + hd * l * p.DPad;
        foreach (var (start, size) in p.ValueChunks)
        {
            int real = (int)Math.Clamp(d - start, 0, size);  // columns of v in this chunk; the rest are zeros
            for (long r = 0; r < l; r++)
            {
                new ReadOnlySpan<ushort>(vIn + r * d + start, real).CopyTo(new Span<ushort>(tmp + r * size, real));
                new Span<ushort>(tmp + r * size + real, (int)size - real).Clear();
            }
            Pack(l, size, size, size, BFloat16, BFloat16, tmp, vOut + start * l);
        }
    }

    /// <summary>One task: R query rows of one head against all keys.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunTask(Plan p, long task, Workspace ws)
    {
        long l = p.L, d = p.D;
        long hd = task / p.BlocksPerHead, r0 = task % p.BlocksPerHead * p.Rows, rb = Math.Min(p.Rows, p.N - r0);
        ushort* qRows = p.Q + (hd * p.N + r0) * d;
        ushort* kHead = p.KPacked + hd * l * d;
        ushort* vHead = p.VPacked + hd * l * p.DPad;
        // a. S = Q·Kᵀ, fp32, one brgemm per packed key chunk.
        foreach (var (start, size) in p.KeyChunks)
            Brgemm(rb, size, d, d, size, l + RowPad, 0, qRows, kHead + start * d, ws.S + start, 1);
        // b. P = bf16(exp((S − rowmax)/√d)), and the sum of those bf16 values per row.
        for (long i = 0; i < rb; i++)
            ws.Sum[i] = SoftmaxRow(ws.S + i * (l + RowPad), ws.P + i * (l + 2 * RowPad), (int)l, p.Scale);
        // c. O = P·V, fp32, one brgemm per packed value chunk (K = L).
        foreach (var (start, size) in p.ValueChunks)
            Brgemm(rb, size, l, l + 2 * RowPad, size, p.DPad, 0, ws.P, vHead + start * l, ws.O + start, 1);
        // d. out = bf16(O / sum)
        ushort* outRows = p.Out + (hd * p.N + r0) * d;
        for (long i = 0; i < rb; i++)
            StoreRow(ws.O + i * p.DPad, outRows + i * d, (int)d, 1 / ws.Sum[i]);
    }

    /// <summary>[start, size) chunks of ≤ 64 covering a length that is a multiple of 16.</summary>
    private static (long Start, long Size)[] Chunks(long length)
    {
        var list = new List<(long, long)>();
        for (long s = 0; s < length; s += KeyChunk) list.Add((s, Math.Min(KeyChunk, length - s)));
        return [.. list];
    }

    internal static void* Data(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    /// <summary>Per-thread buffers, 64-byte aligned; releases the thread's AMX tile configuration when done.</summary>
    private sealed class Workspace : IDisposable
    {
        public readonly float* S, O, Sum;
        public readonly ushort* P;

        public Workspace(long rows, long l, long dPad)
        {
            S = (float*)NativeMemory.AlignedAlloc((nuint)(rows * (l + RowPad) * 4), 64);
            P = (ushort*)NativeMemory.AlignedAlloc((nuint)(rows * (l + 2 * RowPad) * 2), 64);
            O = (float*)NativeMemory.AlignedAlloc((nuint)(rows * dPad * 4), 64);
            Sum = (float*)NativeMemory.AlignedAlloc((nuint)(rows * 4), 64);
        }

        public void Dispose()
        {
            NativeMemory.AlignedFree(S); NativeMemory.AlignedFree(P); NativeMemory.AlignedFree(O); NativeMemory.AlignedFree(Sum);
            BrgemmRelease(1);
        }
    }

    /// <summary>
    /// One row: m = max(s); p = bf16(exp((s − m)·scale)); returns Σ p of the rounded values, so the weights actually
    /// used sum to one after the division.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // hot from its first call: no tier-0 code for Vector512
    internal static float SoftmaxRow(float* s, ushort* p, int length, float scale)
    {
        // Row max with four accumulators and vmaxps (MaxNative: the scores are finite, so IEEE NaN/±0 handling is
        // not needed; Vector512.Max's exact semantics cost three dependent instructions per step).
        var m0 = Vector512.Create(float.NegativeInfinity);
        Vector512<float> m1 = m0, m2 = m0, m3 = m0;
        int j = 0;
        for (; j + 64 <= length; j += 64)
        {
            m0 = Vector512.MaxNative(m0, Vector512.Load(s + j));
            m1 = Vector512.MaxNative(m1, Vector512.Load(s + j + 16));
            m2 = Vector512.MaxNative(m2, Vector512.Load(s + j + 32));
            m3 = Vector512.MaxNative(m3, Vector512.Load(s + j + 48));
        }
        for (; j < length; j += 16)
            m0 = Vector512.MaxNative(m0, Vector512.Load(s + j));
        float m = HorizontalMax(Vector512.MaxNative(Vector512.MaxNative(m0, m1), Vector512.MaxNative(m2, m3)));
        // exp(x) = 2^(x·log2 e): fold log2 e into the scale, so t = s·a + b is the base-2 exponent in one FMA.
        float a = scale * 1.44269504f;
        var c = new Exp2Constants(a, -m * a);
        Vector512<float> sum0 = Vector512<float>.Zero, sum1 = sum0;
        int k = 0;
        for (; k + 32 <= length; k += 32)
        {
            var lo = Bf16Bits(Exp2(Vector512.Load(s + k), c), c.Half);
            var hi = Bf16Bits(Exp2(Vector512.Load(s + k + 16), c), c.Half);
            sum0 += (lo << 16).AsSingle();
            sum1 += (hi << 16).AsSingle();
            Vector512.Narrow(lo, hi).Store(p + k);
        }
        if (k < length)   // a last 16
        {
            var lo = Bf16Bits(Exp2(Vector512.Load(s + k), c), c.Half);
            sum0 += (lo << 16).AsSingle();
            Vector512.Narrow(lo, Vector512<uint>.Zero).GetLower().Store(p + k);
        }
        return Vector512.Sum(sum0 + sum1);
    }

    /// <summary>The constants of <see cref="Exp2(Vector512{float}, in Exp2Constants)"/>, broadcast once per row.</summary>
    private readonly struct Exp2Constants(float a, float b)
    {
        public readonly Vector512<float> A = Vector512.Create(a), B = Vector512.Create(b);
        public readonly Vector512<float> Magic = Vector512.Create(12582912f);   // 1.5·2²³
        public readonly Vector512<float> Floor = Vector512.Create(-125f);
        public readonly Vector512<float> C4 = Vector512.Create(9.6181291e-3f), C3 = Vector512.Create(5.5504109e-2f);
        public readonly Vector512<float> C2 = Vector512.Create(0.24022651f), C1 = Vector512.Create(0.69314718f);
        public readonly Vector512<uint> Half = Vector512.Create(0x8000u);
    }

    /// <summary>
    /// 2^t for t = s·a + b ≤ 0 (a tiny positive rounding excess allowed): t = n + f, n = round(t) through the
    /// 1.5·2²³ trick (n lands in the low mantissa bits), |f| ≤ ½, 2^f by its degree-4 Taylor polynomial in f·ln 2
    /// (relative error ≤ 4.3e-5, 50× below the bf16 rounding that follows), 2^n added to the exponent bits. t is
    /// clamped at −125, where 2^t &lt; 3e-38 is negligible next to the row's largest weight 1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Exp2(Vector512<float> s, in Exp2Constants c)
    {
        var t = Vector512.MaxNative(Vector512.FusedMultiplyAdd(s, c.A, c.B), c.Floor);
        var shifted = t + c.Magic;
        var f = t - (shifted - c.Magic);
        var poly = Vector512.FusedMultiplyAdd(c.C4, f, c.C3);
        poly = Vector512.FusedMultiplyAdd(poly, f, c.C2);
        poly = Vector512.FusedMultiplyAdd(poly, f, c.C1);
        poly = Vector512.FusedMultiplyAdd(poly, f, Vector512<float>.One);
        return (poly.AsInt32() + (shifted.AsInt32() << 23)).AsSingle();
    }

    /// <summary>out[j] = bf16(o[j]·f).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StoreRow(float* o, ushort* output, int d, float f)
    {
        int j = 0;
        var vf = Vector512.Create(f);
        for (; j + 16 <= d; j += 16)
            Vector512.Narrow(Bf16Bits(Vector512.Load(o + j) * vf, Vector512.Create(0x8000u)), Vector512<uint>.Zero).GetLower().Store(output + j);
        for (; j < d; j++)
            output[j] = (ushort)((BitConverter.SingleToUInt32Bits(o[j] * f) + 0x8000) >> 16);
    }

    /// <summary>
    /// x (finite, ≥ 0 here) rounded to bf16, its 16 bits in the low half of each lane: round to nearest, ties away
    /// from zero (+0x8000), 2 operations instead of 5 for ties-to-even; ties (the lower 16 bits exactly 0x8000) are
    /// one value in 65536 and move that value by half a bf16 ulp, which is the rounding error anyway.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Bf16Bits(Vector512<float> x, Vector512<uint> half) => (x.AsUInt32() + half) >> 16;

    private static float HorizontalMax(Vector512<float> v)
    {
        var m = Vector256.MaxNative(v.GetLower(), v.GetUpper());
        var m2 = Vector128.MaxNative(m.GetLower(), m.GetUpper());
        return MathF.Max(MathF.Max(m2[0], m2[1]), MathF.Max(m2[2], m2[3]));
    }
}
