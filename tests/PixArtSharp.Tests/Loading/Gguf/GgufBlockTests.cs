using PixArtSharp.Loading.Gguf;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>Every block format against ComfyUI-GGUF's dequant.py (fixtures gguf/blocks.*).</summary>
public class GgufBlockTests(ITestOutputHelper output)
{
    public static TheoryData<string> Types => new() { "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K" };

    /// <summary>README: atol 1e-6 relative to each block's scale (exact fp32 arithmetic d·q (+ m)); measured: exact.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void DecodesLikeDequantPy(string typeName)
    {
        using var r = new Reference("gguf/blocks");
        var info = r.Json.GetProperty("types").GetProperty(typeName);
        var type = Enum.Parse<GgmlType>(typeName);
        Assert.Equal(info.GetProperty("ggml_type").GetUInt32(), (uint)type);
        Assert.Equal(info.GetProperty("block_size").GetInt32(), GgmlTypes.BlockSize(type));
        Assert.Equal(info.GetProperty("type_size").GetInt32(), GgmlTypes.TypeSize(type));

        using var bytes = r[typeName + ".bytes"];
        using var expected = r[typeName + ".values"];
        long blocks = info.GetProperty("blocks").GetInt64();
        Assert.Equal(blocks, bytes.shape[0]);
        // As a [blocks, block size] tensor: one row per block, so each row's scale bounds its error.
        int bs = GgmlTypes.BlockSize(type);
        using var q = QuantizedTensor.FromBytes(typeName, type, [blocks, bs], bytes.bytes);
        using var got = q.Dequantize(ScalarType.Float32);
        // The C# CPU decoder (Q8_0, Q4_K, Q5_K, Q6_K) and the tensor ops give the same bits.
        using var viaOps = q.Dequantize(ScalarType.Float32, allowCpuKernel: false);
        Assert.True(got.eq(viaOps).all().item<bool>(), "the CPU decoder and the tensor ops differ");
        foreach (var dt in new[] { ScalarType.BFloat16, ScalarType.Float16 })
        {
            using var direct = q.Dequantize(dt);
            using var cast = viaOps.to(dt);
            Assert.True(direct.eq(cast).all().item<bool>(), $"{dt}: the CPU decoder's rounding differs from torch's cast");
        }
        using var want = expected.reshape(blocks, bs);
        using var scale = want.abs().amax([1], keepdim: true).clamp_min(1e-30);
        using var rel = (got - want).abs().div(scale).max();
        double err = rel.item<float>();
        double abs = Compare.MaxAbsDiff(want, got);
        output.WriteLine($"{typeName}: max |Δ|/block scale = {err:E2}, max |Δ| = {abs:E2}");
        Assert.True(err <= 1e-6, $"{typeName}: max |Δ|/scale {err:E3}");
        // The rows path (the embedding lookup) decodes the same values.
        using var idx = tensor(new long[] { blocks - 1, 0, 1 });
        using var rows = q.DequantizeRows(idx, ScalarType.Float32);
        using var wantRows = want.index_select(0, idx);
        Assert.Equal(0.0, Compare.MaxAbsDiff(wantRows, rows), 6);
    }
}
