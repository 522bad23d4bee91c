namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// Encoders for the block formats the writer produces (the decoder is <see cref="GgmlDequant"/>).
/// Q8_0 is llama.cpp's reference quantizer (<c>quantize_row_q8_0_ref</c>: d = amax/127, q = round(x/d)). Q4_K and Q5_K
/// are a simple, correct quantizer, not llama.cpp's (which searches each sub-block's scale and min to minimise the
/// squared error): per 32-value sub-block, min m = min(0, min x) and scale = (max x − m)/(2^bits − 1); the eight scales
/// and mins are then quantized to 6 bits against the super-block's fp16 d and dmin, and each value rounds against the
/// scale and min it will be decoded with. Its error is somewhat above llama.cpp's on the same data.
/// </summary>
internal static class GgmlQuantize
{
    private const int QK_K = GgmlTypes.QK_K;

    public static readonly IReadOnlyList<GgmlType> Supported = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q5_K];

    /// <summary>Encodes <paramref name="x"/> (a whole number of blocks) into <paramref name="dst"/> (its exact byte length).</summary>
    public static void Encode(GgmlType type, ReadOnlySpan<float> x, Span<byte> dst)
    {
        int bs = GgmlTypes.BlockSize(type), ts = GgmlTypes.TypeSize(type);
        if (x.Length % bs != 0 || dst.Length != x.Length / bs * ts)
            throw new ArgumentException($"{type}: {x.Length} values need a multiple of {bs} and {x.Length / bs * ts} bytes, got {dst.Length}.");
        int nb = x.Length / bs;
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(dst[(4 * i)..], x[i]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(dst[(2 * i)..], (Half)x[i]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(dst[(2 * i)..], ToBf16(x[i]));
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < nb; b++) Q8_0(x.Slice(b * 32, 32), dst.Slice(b * 34, 34));
                break;
            case GgmlType.Q4_K:
                for (int b = 0; b < nb; b++) QK(x.Slice(b * QK_K, QK_K), dst.Slice(b * 144, 144), bits: 4);
                break;
            case GgmlType.Q5_K:
                for (int b = 0; b < nb; b++) QK(x.Slice(b * QK_K, QK_K), dst.Slice(b * 176, 176), bits: 5);
                break;
            default:
                throw new NotSupportedException($"The GGUF writer does not encode {GgmlTypes.Name(type)}; it writes {string.Join(", ", Supported)}.");
        }
    }

    /// <summary>fp32 → bf16, round to nearest even (ggml's GGML_FP32_TO_BF16; NaN stays a quiet NaN).</summary>
    private static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    private static float RoundAway(float v) => MathF.Round(v, MidpointRounding.AwayFromZero);   // C roundf

    private static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        foreach (var v in x) amax = MathF.Max(amax, MathF.Abs(v));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        BitConverter.TryWriteBytes(y, (Half)d);
        for (int j = 0; j < 32; j++) y[2 + j] = (byte)(sbyte)RoundAway(x[j] * id);
    }

    /// <summary>Q4_K (bits 4) and Q5_K (bits 5): layouts as <see cref="GgmlDequant.Layout"/>.</summary>
    private static void QK(ReadOnlySpan<float> x, Span<byte> y, int bits)
    {
        int qmax = (1 << bits) - 1;
        Span<float> scale = stackalloc float[8], negMin = stackalloc float[8];
        for (int j = 0; j < 8; j++)
        {
            float mn = 0, mx = float.MinValue;
            for (int i = 0; i < 32; i++) { mn = MathF.Min(mn, x[32 * j + i]); mx = MathF.Max(mx, x[32 * j + i]); }
            scale[j] = (MathF.Max(mx, mn) - mn) / qmax;
            negMin[j] = -mn;
        }
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; j++) { maxScale = MathF.Max(maxScale, scale[j]); maxMin = MathF.Max(maxMin, negMin[j]); }
        Half dh = (Half)(maxScale / 63), dminh = (Half)(maxMin / 63);
        float d = (float)dh, dmin = (float)dminh;
        Span<byte> sc = stackalloc byte[8], m = stackalloc byte[8];
        for (int j = 0; j < 8; j++)
        {
            sc[j] = d > 0 ? (byte)Math.Clamp(RoundAway(scale[j] / d), 0, 63) : (byte)0;
            m[j] = dmin > 0 ? (byte)Math.Clamp(RoundAway(negMin[j] / dmin), 0, 63) : (byte)0;
        }
        y.Clear();
        BitConverter.TryWriteBytes(y, dh);
        BitConverter.TryWriteBytes(y[2..], dminh);
        var scales = y.Slice(4, 12);
        for (int j = 0; j < 4; j++)
        {
            scales[j] = (byte)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
            scales[j + 4] = (byte)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
            scales[j + 8] = (byte)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
        }
        var qh = bits == 5 ? y.Slice(16, 32) : default;
        var qs = bits == 5 ? y.Slice(48, 128) : y.Slice(16, 128);
        for (int j = 0; j < 8; j++)
        {
            // Decoded as (d·sc)·q − dmin·m: round each value against exactly those.
            float dj = d * sc[j], mj = dmin * m[j];
            for (int i = 0; i < 32; i++)
            {
                int q = dj > 0 ? (int)Math.Clamp(RoundAway((x[32 * j + i] + mj) / dj), 0, qmax) : 0;
                qs[32 * (j / 2) + i] |= (byte)((q & 15) << (4 * (j % 2)));
                if (bits == 5) qh[i] |= (byte)(((q >> 4) & 1) << j);
            }
        }
    }
}
