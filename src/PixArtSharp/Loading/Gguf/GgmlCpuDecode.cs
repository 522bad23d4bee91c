using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// CPU decoders for the common T5 GGUF types (Q8_0, Q4_K, Q5_K, Q6_K), one pass over the blocks in place of the
/// dozen tensor ops of <see cref="GgmlDequant"/> (measured ≈ 10× faster on a 4096×10240 matrix). The arithmetic is
/// the same fp32 d·q (− dmin·m) (C# float ops round as torch's; no fused multiply-add), so the values are
/// identical, which the block tests check against dequant.py for both paths. Other types and other devices use the
/// tensor ops.
/// </summary>
internal static unsafe class GgmlCpuDecode
{
    public static bool Supports(GgmlType t) => t is GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>
    /// Decodes <paramref name="raw"/> (uint8 CPU, contiguous, whole blocks) to a new [blocks · block size] tensor of
    /// <paramref name="dtype"/> (fp32, bf16 or fp16): each block is decoded in fp32 and rounded to the dtype as
    /// torch's cast does (round to nearest even), without an fp32 copy of the whole matrix.
    /// </summary>
    public static Tensor Decode(GgmlType type, Tensor raw, ScalarType dtype)
    {
        CheckDtype(dtype);
        int bs = GgmlTypes.BlockSize(type);
        long nb = raw.numel() / GgmlTypes.TypeSize(type);
        var result = empty(nb * bs, dtype);
        DecodeInto(type, raw, 0, nb, result);
        return result;
    }

    /// <summary>
    /// Decodes blocks [<paramref name="firstBlock"/>, + <paramref name="count"/>) of <paramref name="raw"/> into the
    /// first count · block size elements of <paramref name="dst"/> (CPU, contiguous, fp32/bf16/fp16), split over the
    /// cores: the tiled linear's step, which refills one buffer instead of allocating a matrix per call.
    /// </summary>
    public static void DecodeInto(GgmlType type, Tensor raw, long firstBlock, long count, Tensor dst, bool parallel = true)
    {
        var dtype = dst.dtype;
        CheckDtype(dtype);
        int bs = GgmlTypes.BlockSize(type), ts = GgmlTypes.TypeSize(type);
        if (firstBlock < 0 || count < 0 || (firstBlock + count) * ts > raw.numel() || !raw.is_contiguous()
            || dst.numel() < count * bs || !dst.is_contiguous() || dst.device_type != TorchSharp.DeviceType.CPU)
            throw new ArgumentException($"{type}: blocks [{firstBlock}, {firstBlock + count}) do not fit {raw.numel() / ts} blocks or a {dst.numel()}-element contiguous CPU buffer.");
        fixed (byte* srcPin = raw.bytes)
        fixed (byte* dstPin = dst.bytes)
        {
            if (parallel) Split(type, dtype, (nint)srcPin + (nint)(firstBlock * ts), (nint)dstPin, count, bs, ts);
            else Run(type, dtype, (nint)srcPin + (nint)(firstBlock * ts), (nint)dstPin, count, bs, ts);
        }
    }

    private static void Split(GgmlType type, ScalarType dtype, nint srcAddr, nint dstAddr, long count, int bs, int ts)
    {
        int elementSize = dtype == ScalarType.Float32 ? 4 : 2;
        // Contiguous ranges of at least MinBlocks, at most one per core: few enough that starting them costs little
        // next to the decode (a 256-row tile of a 4096-wide Q8_0 matrix is 32768 blocks, ≈ 0.1 ms per core).
        const long MinBlocks = 2048;
        int parts = (int)Math.Clamp(count / MinBlocks, 1, Environment.ProcessorCount);
        if (parts == 1) { Run(type, dtype, srcAddr, dstAddr, count, bs, ts); return; }
        Parallel.For(0, parts, p =>
        {
            long b0 = count * p / parts, b1 = count * (p + 1) / parts;
            Run(type, dtype, srcAddr + (nint)(b0 * ts), dstAddr + (nint)(b0 * bs * elementSize), b1 - b0, bs, ts);
        });
    }

    private static void CheckDtype(ScalarType dtype)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"The CPU decoder writes Float32, BFloat16 or Float16, not {dtype}.", nameof(dtype));
    }

    /// <summary>Decodes <paramref name="nb"/> whole blocks at <paramref name="src"/> to bf16 at <paramref name="dst"/> on this thread.</summary>
    internal static void DecodeBf16(GgmlType type, byte* src, ushort* dst, long nb) =>
        Run(type, ScalarType.BFloat16, (nint)src, (nint)dst, nb, GgmlTypes.BlockSize(type), GgmlTypes.TypeSize(type));

    /// <summary>Decodes <paramref name="nb"/> blocks at <paramref name="srcAddr"/> to <paramref name="dstAddr"/> on this thread.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Run(GgmlType type, ScalarType dtype, nint srcAddr, nint dstAddr, long nb, int bs, int ts)
    {
        byte* src = (byte*)srcAddr;
        if (type == GgmlType.Q8_0 && dtype == ScalarType.BFloat16)
        {
            Q8_0Bf16(src, (ushort*)dstAddr, nb);
            return;
        }
        if (type is GgmlType.Q4_K or GgmlType.Q5_K && dtype == ScalarType.BFloat16 && Avx512F.IsSupported && Avx512BW.IsSupported)
        {
            for (long b = 0; b < nb; b++) Q4Q5_KBf16(src + b * ts, (ushort*)dstAddr + b * bs, hasHigh: type == GgmlType.Q5_K);
            return;
        }
        float* buf = stackalloc float[GgmlTypes.QK_K];
        for (long b = 0; b < nb; b++)
        {
            byte* x = src + b * ts;
            float* y = dtype == ScalarType.Float32 ? (float*)dstAddr + b * bs : buf;
            switch (type)
            {
                case GgmlType.Q8_0: Q8_0(x, y); break;
                case GgmlType.Q4_K: Q4Q5_K(x, y, hasHigh: false); break;
                case GgmlType.Q5_K: Q4Q5_K(x, y, hasHigh: true); break;
                case GgmlType.Q6_K: Q6_K(x, y); break;
            }
            if (dtype == ScalarType.BFloat16) ToBf16(buf, (ushort*)dstAddr + b * bs, bs);
            else if (dtype == ScalarType.Float16)
            {
                Half* o = (Half*)dstAddr + b * bs;
                for (int i = 0; i < bs; i++) o[i] = (Half)buf[i];
            }
        }
    }

    private static float Half(byte* p) => HalfToSingle(p);

    /// <summary>
    /// The fp16 scale at <paramref name="p"/> as fp32, the value <c>(float)(Half)</c> gives, from a table of all 65,536
    /// patterns. .NET 10 has no F16C intrinsic and Half's conversion is a call into CoreLib that runs as precompiled,
    /// unoptimised code until tiering replaces it: profiled, it took most of a first Q8_0 T5 forward's extra 0.6 s.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfToSingle(byte* p) => HalfTable[*(ushort*)p];

    private static readonly float* HalfTable = BuildHalfTable();

    private static float* BuildHalfTable()
    {
        var table = (float*)NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);   // for the process's life
        for (int bits = 0; bits < 65536; bits++) table[bits] = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
        return table;
    }

    /// <summary>
    /// fp32 → bf16 as torch's CPU cast (<c>.to(bfloat16)</c>, ATen's vectorised cvtfp32_bf16) rounds: to nearest
    /// even, and every NaN → 0xFFFF (c10::BFloat16's scalar constructor would give 0x7FC0; the tensor cast is the
    /// reference, and NaN weights only come from broken files).
    /// </summary>
    private static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0xFFFF;
        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }

    /// <summary><see cref="ToBf16(float)"/> on lanes: (u + 0x7FFF + bit 16 of u) >> 16, NaN lanes 0xFFFF.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> ToBf16(Vector512<float> f)
    {
        var u = f.AsUInt32();
        var r = (u + Vector512.Create(0x7FFFu) + ((u >> 16) & Vector512<uint>.One)) >> 16;
        return Vector512.ConditionalSelect(Vector512.Equals(f, f).AsUInt32(), r, Vector512.Create(0xFFFFu));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> ToBf16(Vector256<float> f)
    {
        var u = f.AsUInt32();
        var r = (u + Vector256.Create(0x7FFFu) + ((u >> 16) & Vector256<uint>.One)) >> 16;
        return Vector256.ConditionalSelect(Vector256.Equals(f, f).AsUInt32(), r, Vector256.Create(0xFFFFu));
    }

    /// <summary>n fp32 values (a multiple of 32) → bf16.</summary>
    private static void ToBf16(float* src, ushort* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 32 <= n; i += 32)
                Vector512.Narrow(ToBf16(Vector512.Load(src + i)), ToBf16(Vector512.Load(src + i + 16))).Store(dst + i);
        else if (Vector256.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                Vector256.Narrow(ToBf16(Vector256.Load(src + i)), ToBf16(Vector256.Load(src + i + 8))).Store(dst + i);
        for (; i < n; i++) dst[i] = ToBf16(src[i]);
    }

    /// <summary>
    /// Q8_0 straight to bf16, the hot path of a Q8_0 T5: per block the fp16 scale d and 32 int8 q; each d·q is the
    /// same fp32 product as <see cref="Q8_0(byte*, float*)"/> (an exact one: 11 × 8 significant bits), rounded to bf16
    /// on lanes without an fp32 buffer.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // vector code: straight to the optimising JIT, not tier 0
    private static void Q8_0Bf16(byte* x, ushort* y, long nb)
    {
        if (Avx512F.IsSupported && Avx512BW.IsSupported)
        {
            for (long b = 0; b < nb; b++, x += 34, y += 32)
            {
                var d = Vector512.Create(HalfToSingle(x));
                var lo = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)x + 2))) * d;
                var hi = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)x + 18))) * d;
                Avx512F.ConvertToVector256UInt16(ToBf16(lo)).Store(y);           // vpmovdw: the low 16 bits of each lane
                Avx512F.ConvertToVector256UInt16(ToBf16(hi)).Store(y + 16);
            }
            return;
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (long b = 0; b < nb; b++, x += 34, y += 32)
            {
                var d = Vector256.Create(HalfToSingle(x));
                var (q0, q1) = Vector256.Widen(Vector256.Load((sbyte*)x + 2));                // 2 × 16 int16
                var (a, bq) = Vector256.Widen(q0);
                var (c, e) = Vector256.Widen(q1);                                          // 4 × 8 int32, in order
                Vector256.Narrow(ToBf16(Vector256.ConvertToSingle(a) * d), ToBf16(Vector256.ConvertToSingle(bq) * d)).Store(y);
                Vector256.Narrow(ToBf16(Vector256.ConvertToSingle(c) * d), ToBf16(Vector256.ConvertToSingle(e) * d)).Store(y + 16);
            }
            return;
        }
        float* buf = stackalloc float[32];
        for (long b = 0; b < nb; b++, x += 34, y += 32)
        {
            Q8_0(x, buf);
            for (int i = 0; i < 32; i++) y[i] = ToBf16(buf[i]);
        }
    }

    private static void Q8_0(byte* x, float* y)
    {
        float d = Half(x);
        sbyte* qs = (sbyte*)(x + 2);
        for (int j = 0; j < 32; j++) y[j] = d * qs[j];
    }

    /// <summary>Q4_K { d, dmin, scales[12], qs[128] } and Q5_K { d, dmin, scales[12], qh[32], qs[128] }.</summary>
    private static void Q4Q5_K(byte* x, float* y, bool hasHigh)
    {
        float d = Half(x), dmin = Half(x + 2);
        byte* s = x + 4;
        byte* qh = x + 16;
        byte* qs = hasHigh ? x + 48 : x + 16;
        for (int j = 0; j < 8; j++)
        {
            // get_scale_min: 6-bit scale and min of sub-block j.
            int sc, m;
            if (j < 4) { sc = s[j] & 0x3F; m = s[j + 4] & 0x3F; }
            else { sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30); m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30); }
            float dj = d * sc, mj = dmin * m;
            byte* q = qs + 32 * (j / 2);
            int shift = 4 * (j % 2);
            for (int i = 0; i < 32; i++)
            {
                int v = (q[i] >> shift) & 0x0F;
                if (hasHigh) v |= ((qh[i] >> j) & 1) << 4;
                y[32 * j + i] = dj * v - mj;
            }
        }
    }

    /// <summary>
    /// <see cref="Q4Q5_K"/> straight to bf16 on AVX-512 lanes, one 32-value sub-block at a time: the same fp32
    /// (d·sc)·q − dmin·m, multiply and subtract rounded separately (no fused multiply-add), as the tensor ops do.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // called per block: optimised from the first call, not tier 0
    private static void Q4Q5_KBf16(byte* x, ushort* y, bool hasHigh)
    {
        float d = Half(x), dmin = Half(x + 2);
        byte* s = x + 4;
        byte* qs = hasHigh ? x + 48 : x + 16;
        var high = hasHigh ? Vector256.Load(x + 16) : default;                      // qh[32]: bit j = sub-block j's 5th bit
        for (int j = 0; j < 8; j++)
        {
            int sc, m;
            if (j < 4) { sc = s[j] & 0x3F; m = s[j + 4] & 0x3F; }
            else { sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30); m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30); }
            var dj = Vector512.Create(d * sc);
            var mj = Vector512.Create(dmin * m);
            var v = (Vector256.Load(qs + 32 * (j / 2)) >> (4 * (j % 2))) & Vector256.Create((byte)0x0F);
            if (hasHigh) v |= ((high >> j) & Vector256<byte>.One) << 4;
            var lo = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(v.GetLower()));   // vpmovzxbd
            var hi = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(v.GetUpper()));
            Avx512F.ConvertToVector256UInt16(ToBf16(dj * lo - mj)).Store(y + 32 * j);
            Avx512F.ConvertToVector256UInt16(ToBf16(dj * hi - mj)).Store(y + 32 * j + 16);
        }
    }

    /// <summary>Q6_K { ql[128], qh[64], scales[16] (int8), d }.</summary>
    private static void Q6_K(byte* x, float* y)
    {
        byte* ql = x, qh = x + 128;
        sbyte* scales = (sbyte*)(x + 192);
        float d = Half(x + 208);
        for (int e = 0; e < 256; e++)
        {
            int h = e / 128, r = e % 128;
            int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            int hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
            float dl = d * scales[e / 16];
            y[e] = dl * ((lo | (hi << 4)) - 32);
        }
    }
}
