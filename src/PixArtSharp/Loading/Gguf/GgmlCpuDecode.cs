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
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"The CPU decoder writes Float32, BFloat16 or Float16, not {dtype}.", nameof(dtype));
        int bs = GgmlTypes.BlockSize(type), ts = GgmlTypes.TypeSize(type);
        long nb = raw.numel() / ts;
        var result = empty(nb * bs, dtype);
        fixed (byte* srcPin = raw.bytes)
        fixed (byte* dstPin = result.bytes)
        {
            nint srcAddr = (nint)srcPin, dstAddr = (nint)dstPin;
            Run(type, dtype, srcAddr, dstAddr, nb, bs, ts);
        }
        return result;
    }

    private static void Run(GgmlType type, ScalarType dtype, nint srcAddr, nint dstAddr, long nb, int bs, int ts)
    {
        const long chunk = 1024;
        Parallel.For(0, (nb + chunk - 1) / chunk, c =>
        {
            byte* src = (byte*)srcAddr;
            float* buf = stackalloc float[GgmlTypes.QK_K];
            long end = Math.Min(nb, (c + 1) * chunk);
            for (long b = c * chunk; b < end; b++)
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
                if (dtype == ScalarType.BFloat16)
                {
                    ushort* o = (ushort*)dstAddr + b * bs;
                    for (int i = 0; i < bs; i++) o[i] = ToBf16(buf[i]);
                }
                else if (dtype == ScalarType.Float16)
                {
                    Half* o = (Half*)dstAddr + b * bs;
                    for (int i = 0; i < bs; i++) o[i] = (Half)buf[i];
                }
            }
        });
    }

    private static float Half(byte* p) => (float)*(Half*)p;

    /// <summary>fp32 → bf16 as c10::BFloat16 rounds (nearest even; NaN → 0x7FC0).</summary>
    private static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FC0;
        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
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
