using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// ggml's block formats, decoded with libtorch tensor ops exactly as ComfyUI-GGUF's <c>dequant.py</c> (commit 795e451)
/// does with <c>dtype=float32</c>: every value is d·q (+ m) of an fp16 scale and a small integer, so each product is
/// exact in fp32 and the result matches the reference bit for bit. Layouts are llama.cpp's (ggml-common.h
/// <c>block_q8_0</c> … <c>block_q6_K</c>).
/// <para>
/// A block is not read from raw bytes here: TorchSharp cannot reinterpret a uint8 tensor as fp16, so each block's
/// fields arrive as separate typed "planes" ([blocks, field width]) cut out of typed views of the same bytes
/// (<see cref="QuantizedTensor"/>). On the CPU these are strided views into the file's memory mapping; on another
/// device, compact copies. The ops below then run wherever the planes are.
/// </para>
/// </summary>
internal static class GgmlDequant
{
    /// <summary>One field of a block: its byte offset and length within the block and the element type it is read as.</summary>
    public readonly record struct Plane(string Name, int Offset, int Length, ScalarType Type);

    private const ScalarType U8 = ScalarType.Byte, I8 = ScalarType.Int8, H = ScalarType.Float16;
    private const int QK_K = GgmlTypes.QK_K, K_SCALE_SIZE = 12;

    /// <summary>The fields of one block of <paramref name="type"/>, in storage order.</summary>
    public static Plane[] Layout(GgmlType type) => type switch
    {
        GgmlType.F32 => [new("x", 0, 4, ScalarType.Float32)],
        GgmlType.F16 => [new("x", 0, 2, H)],
        GgmlType.BF16 => [new("x", 0, 2, ScalarType.BFloat16)],
        // block_q8_0 { half d; int8 qs[32]; }
        GgmlType.Q8_0 => [new("d", 0, 2, H), new("qs", 2, 32, I8)],
        // block_q4_0 { half d; uint8 qs[16]; }   block_q4_1 { half d, m; uint8 qs[16]; }
        GgmlType.Q4_0 => [new("d", 0, 2, H), new("qs", 2, 16, U8)],
        GgmlType.Q4_1 => [new("d", 0, 2, H), new("m", 2, 2, H), new("qs", 4, 16, U8)],
        // block_q5_0 { half d; uint8 qh[4]; uint8 qs[16]; }   block_q5_1 { half d, m; uint8 qh[4]; uint8 qs[16]; }
        GgmlType.Q5_0 => [new("d", 0, 2, H), new("qh", 2, 4, U8), new("qs", 6, 16, U8)],
        GgmlType.Q5_1 => [new("d", 0, 2, H), new("m", 2, 2, H), new("qh", 4, 4, U8), new("qs", 8, 16, U8)],
        // block_q2_K { uint8 scales[16]; uint8 qs[64]; half d, dmin; }
        GgmlType.Q2_K => [new("scales", 0, 16, U8), new("qs", 16, 64, U8), new("d", 80, 2, H), new("dmin", 82, 2, H)],
        // block_q3_K { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }
        GgmlType.Q3_K => [new("hmask", 0, 32, U8), new("qs", 32, 64, U8), new("scales", 96, 12, U8), new("d", 108, 2, H)],
        // block_q4_K { half d, dmin; uint8 scales[12]; uint8 qs[128]; }
        GgmlType.Q4_K => [new("d", 0, 2, H), new("dmin", 2, 2, H), new("scales", 4, 12, U8), new("qs", 16, 128, U8)],
        // block_q5_K { half d, dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }
        GgmlType.Q5_K => [new("d", 0, 2, H), new("dmin", 2, 2, H), new("scales", 4, 12, U8), new("qh", 16, 32, U8), new("qs", 48, 128, U8)],
        // block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }
        GgmlType.Q6_K => [new("ql", 0, 128, U8), new("qh", 128, 64, U8), new("scales", 192, 16, I8), new("d", 208, 2, H)],
        _ => throw new NotSupportedException($"ggml type {GgmlTypes.Name(type)} is not supported; supported: {GgmlTypes.SupportedList}."),
    };

    /// <summary>
    /// Decodes blocks to fp32 [blocks, block size]. <paramref name="planes"/> are the fields of <see cref="Layout"/>,
    /// each [blocks, length / element size], all on one device.
    /// </summary>
    public static Tensor DecodeBlocks(GgmlType type, Tensor[] planes)
    {
        using var scope = NewDisposeScope();
        var result = type switch
        {
            GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => Cast(planes[0], ScalarType.Float32),
            GgmlType.Q8_0 => Q8_0(planes),
            GgmlType.Q4_0 => Q4_0(planes),
            GgmlType.Q4_1 => Q4_1(planes),
            GgmlType.Q5_0 => Q5_0(planes),
            GgmlType.Q5_1 => Q5_1(planes),
            GgmlType.Q2_K => Q2_K(planes),
            GgmlType.Q3_K => Q3_K(planes),
            GgmlType.Q4_K => Q4_K(planes),
            GgmlType.Q5_K => Q5_K(planes),
            GgmlType.Q6_K => Q6_K(planes),
            _ => throw new NotSupportedException($"ggml type {GgmlTypes.Name(type)} is not supported; supported: {GgmlTypes.SupportedList}."),
        };
        return result.MoveToOuterDisposeScope();
    }

    // ---- helpers: the integer ops of dequant.py ----

    /// <summary>t in <paramref name="dtype"/> as a new handle (never the plane itself, which its owner frees).</summary>
    internal static Tensor Cast(Tensor t, ScalarType dtype) => t.dtype == dtype ? t.alias() : t.to(dtype);

    private static Tensor F32(Tensor halfPlane) => halfPlane.to(ScalarType.Float32);                  // [nb, 1]

    /// <summary>x >> shifts, the shifts laid out along <paramref name="shape"/> (broadcast against x).</summary>
    private static Tensor Shr(Tensor x, long[] shape, params int[] shifts) =>
        x.bitwise_right_shift(torch.tensor(shifts, device: x.device).to(x.dtype).reshape(shape));

    private static Tensor And(Tensor x, int mask) => x.bitwise_and(torch.tensor(mask, device: x.device).to(x.dtype));
    private static Tensor Or(Tensor x, Tensor y) => x.bitwise_or(y);
    private static Tensor Shl(Tensor x, int n) => x.bitwise_left_shift(torch.tensor(n, device: x.device).to(x.dtype));

    /// <summary>Two nibbles per byte, low nibbles first: [nb, groups·w] bytes → [nb, groups, 2, w] nibbles (dequant.py's reshape/shift).</summary>
    private static Tensor Nibbles(Tensor qs, long nb, int w) => And(Shr(qs.reshape(nb, -1, 1, w), [1, 1, 2, 1], 0, 4), 0x0F);

    /// <summary>dequant.py's to_uint32: 4 little-endian bytes → int32 [nb, 1].</summary>
    private static Tensor ToUInt32(Tensor x)
    {
        var b = x.to(ScalarType.Int32);
        return Or(Or(Or(b[.., 0], Shl(b[.., 1], 8)), Shl(b[.., 2], 16)), Shl(b[.., 3], 24)).unsqueeze(1);
    }

    // ---- legacy quants (32-element blocks) ----

    private static Tensor Q8_0(Tensor[] p) => F32(p[0]) * p[1];                                        // d · q

    private static Tensor Q4_0(Tensor[] p)
    {
        long nb = p[0].shape[0];
        var qs = Nibbles(p[1], nb, 16).reshape(nb, -1).to(ScalarType.Int8) - 8;
        return F32(p[0]) * qs;
    }

    private static Tensor Q4_1(Tensor[] p)
    {
        long nb = p[0].shape[0];
        var qs = Nibbles(p[2], nb, 16).reshape(nb, -1);
        return F32(p[0]) * qs + F32(p[1]);
    }

    /// <summary>The 5-bit values of Q5_0/Q5_1: low nibbles | (bit i of qh) &lt;&lt; 4.</summary>
    private static Tensor Q5Values(Tensor qhBytes, Tensor qsBytes, long nb)
    {
        var qh = ToUInt32(qhBytes).reshape(nb, 1).bitwise_right_shift(torch.arange(32, ScalarType.Int32, qhBytes.device).reshape(1, 32));
        var hi = And(qh, 1).to(ScalarType.Byte);
        var ql = Nibbles(qsBytes, nb, 16).reshape(nb, -1);
        return Or(ql, Shl(hi, 4));                                                                     // uint8 [nb, 32]
    }

    private static Tensor Q5_0(Tensor[] p)
    {
        long nb = p[0].shape[0];
        var qs = Q5Values(p[1], p[2], nb).to(ScalarType.Int8) - 16;
        return F32(p[0]) * qs;
    }

    private static Tensor Q5_1(Tensor[] p)
    {
        long nb = p[0].shape[0];
        var qs = Q5Values(p[2], p[3], nb);
        return F32(p[0]) * qs + F32(p[1]);
    }

    // ---- K-quants (256-element super-blocks) ----

    /// <summary>dequant.py's get_scale_min: the 12 packed bytes → eight 6-bit scales and eight 6-bit mins (uint8 [nb, 8]).</summary>
    private static (Tensor Sc, Tensor Min) ScaleMin(Tensor scales, long nb)
    {
        var s = scales.reshape(nb, 3, 4);
        var d = s[.., 0..1];
        var m = s[.., 1..2];
        var md = s[.., 2..3];
        var sc = torch.cat([And(d, 0x3F), Or(And(md, 0x0F), And(Shr(d, [1], 2), 0x30))], dim: -1);
        var mn = torch.cat([And(m, 0x3F), Or(Shr(md, [1], 4), And(Shr(m, [1], 2), 0x30))], dim: -1);
        return (sc.reshape(nb, 8), mn.reshape(nb, 8));
    }

    private static Tensor Q2_K(Tensor[] p)
    {
        var (scales, qsBytes, dh, dminh) = (p[0], p[1], p[2], p[3]);
        long nb = scales.shape[0];
        var dl = (F32(dh) * And(scales, 0xF)).reshape(nb, QK_K / 16, 1);
        var ml = (F32(dminh) * Shr(scales, [1], 4)).reshape(nb, QK_K / 16, 1);
        var qs = And(Shr(qsBytes.reshape(nb, -1, 1, 32), [1, 1, 4, 1], 0, 2, 4, 6), 3).reshape(nb, QK_K / 16, 16);
        return (dl * qs - ml).reshape(nb, -1);
    }

    private static Tensor Q3_K(Tensor[] p)
    {
        var (hmask, qsBytes, scaleBytes, dh) = (p[0], p[1], p[2], p[3]);
        long nb = hmask.shape[0];
        var lscales = Shr(scaleBytes[.., ..8].reshape(nb, 1, 8), [1, 2, 1], 0, 4).reshape(nb, 16);
        var hscales = Shr(scaleBytes[.., 8..].reshape(nb, 1, 4), [1, 4, 1], 0, 2, 4, 6).reshape(nb, 16);
        var scales = Or(And(lscales, 0x0F), Shl(And(hscales, 0x03), 4)).to(ScalarType.Int8) - 32;
        var dl = (F32(dh) * scales).reshape(nb, 16, 1);
        var ql = And(Shr(qsBytes.reshape(nb, -1, 1, 32), [1, 1, 4, 1], 0, 2, 4, 6).reshape(nb, 16, QK_K / 16), 3);
        var qh = And(Shr(hmask.reshape(nb, -1, 1, 32), [1, 1, 8, 1], 0, 1, 2, 3, 4, 5, 6, 7).reshape(nb, 16, QK_K / 16), 1)
            .bitwise_xor(torch.tensor(1, device: hmask.device).to(ScalarType.Byte));
        var q = ql.to(ScalarType.Int8) - Shl(qh, 2).to(ScalarType.Int8);
        return (dl * q).reshape(nb, QK_K);
    }

    private static Tensor Q4_K(Tensor[] p)
    {
        var (dh, dminh, scales, qsBytes) = (p[0], p[1], p[2], p[3]);
        long nb = dh.shape[0];
        var (sc, m) = ScaleMin(scales, nb);
        var d = (F32(dh) * sc).reshape(nb, -1, 1);
        var dm = (F32(dminh) * m).reshape(nb, -1, 1);
        var qs = And(Shr(qsBytes.reshape(nb, -1, 1, 32), [1, 1, 2, 1], 0, 4), 0x0F).reshape(nb, -1, 32);
        return (d * qs - dm).reshape(nb, QK_K);
    }

    private static Tensor Q5_K(Tensor[] p)
    {
        var (dh, dminh, scales, qhBytes, qsBytes) = (p[0], p[1], p[2], p[3], p[4]);
        long nb = dh.shape[0];
        var (sc, m) = ScaleMin(scales, nb);
        var d = (F32(dh) * sc).reshape(nb, -1, 1);
        var dm = (F32(dminh) * m).reshape(nb, -1, 1);
        var ql = And(Shr(qsBytes.reshape(nb, -1, 1, 32), [1, 1, 2, 1], 0, 4), 0x0F).reshape(nb, -1, 32);
        var qh = And(Shr(qhBytes.reshape(nb, -1, 1, 32), [1, 1, 8, 1], 0, 1, 2, 3, 4, 5, 6, 7), 0x01).reshape(nb, -1, 32);
        var q = Or(ql, Shl(qh, 4));
        return (d * q - dm).reshape(nb, QK_K);
    }

    private static Tensor Q6_K(Tensor[] p)
    {
        var (qlBytes, qhBytes, scales, dh) = (p[0], p[1], p[2], p[3]);
        long nb = qlBytes.shape[0];
        var d = (F32(dh) * scales.to(ScalarType.Float32)).reshape(nb, QK_K / 16, 1);
        var ql = And(Shr(qlBytes.reshape(nb, -1, 1, 64), [1, 1, 2, 1], 0, 4), 0x0F).reshape(nb, -1, 32);
        var qh = And(Shr(qhBytes.reshape(nb, -1, 1, 32), [1, 1, 4, 1], 0, 2, 4, 6), 0x03).reshape(nb, -1, 32);
        var q = (Or(ql, Shl(qh, 4)).to(ScalarType.Int8) - 32).reshape(nb, QK_K / 16, -1);
        return (d * q).reshape(nb, QK_K);
    }
}
