using PixArtSharp.Loading.Gguf;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>
/// The C# CPU decoder (the SIMD Q8_0 → bf16 path and the per-block K-quant paths) against the libtorch-op decode
/// (<see cref="GgmlDequant"/>, itself checked against dequant.py by <see cref="GgufBlockTests"/>), bit for bit, and
/// the tiled quantized linear against decode-whole-then-linear.
/// </summary>
public class GgufTiledLinearTests(ITestOutputHelper output)
{
    private static readonly ScalarType[] DTypes = [ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32];

    /// <summary>
    /// Random blocks (any bits decode), with every fp16 scale field made finite except a few set on purpose to NaN,
    /// ±infinity, subnormals and ±0, which the decoders must carry through the same way.
    /// </summary>
    internal static QuantizedTensor RandomBlocks(GgmlType type, long rows, long cols, int seed, bool specialScales)
    {
        var bytes = new byte[GgmlTypes.ByteLength(type, rows * cols)];
        var rng = new Random(seed);
        rng.NextBytes(bytes);
        int ts = GgmlTypes.TypeSize(type);
        ushort[] specials = [0x7E00, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0000, 0x8000, 0x7BFF];
        foreach (var pl in GgmlDequant.Layout(type).Where(p => p.Type == ScalarType.Float16))
            for (long b = 0; b < bytes.Length / ts; b++)
            {
                long at = b * ts + pl.Offset;
                bytes[at + 1] &= 0x3B;                                                   // exponent < 31: finite
                if (specialScales && rng.Next(16) == 0)
                    BitConverter.TryWriteBytes(bytes.AsSpan((int)at, 2), specials[rng.Next(specials.Length)]);
            }
        return QuantizedTensor.FromBytes("w", type, [rows, cols], bytes);
    }

    /// <summary>Equal bits (NaNs included).</summary>
    private static bool SameBits(Tensor a, Tensor b)
    {
        using var ac = a.contiguous();
        using var bc = b.contiguous();
        return a.dtype == b.dtype && ac.bytes.SequenceEqual(bc.bytes);
    }

    /// <summary>
    /// Every element of bf16/fp16 <paramref name="got"/> is <paramref name="want"/> or a neighbouring value of the
    /// dtype (adjacent bit patterns of one sign); values of opposite signs must both be within 1e-3 of the largest.
    /// </summary>
    internal static bool WithinOneBf16Step(Tensor got, Tensor want)
    {
        using var gc = got.contiguous();
        using var wc = want.contiguous();
        using var g32 = got.to(ScalarType.Float32).contiguous();
        using var w32 = want.to(ScalarType.Float32).contiguous();
        var gb = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, short>(gc.bytes);
        var wb = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, short>(wc.bytes);
        var gf = g32.data<float>().ToArray();
        var wf = w32.data<float>().ToArray();
        float scale = wf.Max(MathF.Abs);
        for (int i = 0; i < gb.Length; i++)
        {
            bool sameSign = gb[i] < 0 == wb[i] < 0;
            if (sameSign ? Math.Abs(gb[i] - wb[i]) > 1 : MathF.Abs(gf[i] - wf[i]) > 1e-3f * scale) return false;
        }
        return true;
    }

    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_K")]
    [InlineData("Q5_K")]
    [InlineData("Q6_K")]
    public void CpuDecoderMatchesTensorOpsBitForBit(string typeName)
    {
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        // 37 rows × 2304 columns: enough blocks to split over the cores, a count that does not divide evenly.
        using var q = RandomBlocks(type, 37, 2304, seed: (int)type, specialScales: true);
        using var reference = q.Dequantize(ScalarType.Float32, allowCpuKernel: false);
        Assert.True(reference.isnan().any().item<bool>(), "the special scales should produce NaNs");
        foreach (var dt in DTypes)
        {
            using var fast = q.Dequantize(dt);
            using var cast = reference.to(dt);
            Assert.True(SameBits(fast, cast), $"{type} → {dt}: the CPU decoder's bits differ from the tensor ops'");
            using var ops = q.Dequantize(dt, allowCpuKernel: false);
            Assert.True(SameBits(fast, ops), $"{type} → {dt}: differs from Dequantize without the CPU kernel");
        }
    }

    /// <summary>A tile at a time into a buffer: any block range decodes as the same range of the whole.</summary>
    [Fact]
    public void DecodeIntoWritesTheRangeAsked()
    {
        using var q = RandomBlocks(GgmlType.Q8_0, 64, 256, seed: 5, specialScales: false);
        using var whole = q.Dequantize(ScalarType.BFloat16).reshape(-1);
        using var raw = tensor(GgufBytes(q));
        using var buf = full(40 * 32 + 7, -1.0f, ScalarType.BFloat16);
        GgmlCpuDecode.DecodeInto(GgmlType.Q8_0, raw, 13, 40, buf);
        using var got = buf.narrow(0, 0, 40 * 32);
        using var want = whole.narrow(0, 13 * 32, 40 * 32);
        Assert.True(SameBits(got, want));
        using var rest = buf.narrow(0, 40 * 32, 7);
        Assert.True(rest.eq(-1.0f).all().item<bool>(), "wrote past the blocks asked for");
        var e = Assert.Throws<ArgumentException>(() => GgmlCpuDecode.DecodeInto(GgmlType.Q8_0, raw, 510, 5, buf));
        Assert.Contains("do not fit", e.Message);
        using var small = empty(31, ScalarType.BFloat16);
        Assert.Throws<ArgumentException>(() => GgmlCpuDecode.DecodeInto(GgmlType.Q8_0, raw, 0, 1, small));
        using var ints = empty(64, ScalarType.Int32);
        Assert.Throws<ArgumentException>(() => GgmlCpuDecode.DecodeInto(GgmlType.Q8_0, raw, 0, 1, ints));
    }

    internal static byte[] GgufBytes(QuantizedTensor q)
    {
        // The planes of a Q8_0 tensor are views of one buffer; rebuild the blocks from the decoded d and q fields.
        using var d = q.Planes[0].contiguous();
        using var qs = q.Planes[1].contiguous();
        var dBytes = d.bytes.ToArray();
        var qBytes = qs.bytes.ToArray();
        long nb = d.shape[0];
        var result = new byte[nb * 34];
        for (long b = 0; b < nb; b++)
        {
            Array.Copy(dBytes, b * 2, result, b * 34, 2);
            Array.Copy(qBytes, b * 32, result, b * 34 + 2, 32);
        }
        return result;
    }

    /// <summary>
    /// Tiled linear = F.linear on the whole decoded matrix, for tiles that do and do not divide the rows, every CPU
    /// decoder type and dtype, a batched 3-D input: the same values up to the order the GEMM sums in (bf16/fp16: at
    /// most one step of the dtype; fp32: 1e-5 of the largest output).
    /// </summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_K")]
    [InlineData("Q5_K")]
    [InlineData("Q6_K")]
    public void TiledLinearMatchesWholeDecode(string typeName)
    {
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        using var q = RandomBlocks(type, 100, 512, seed: 11 + (int)type, specialScales: false);
        foreach (var dt in DTypes)
        {
            using var w = q.Dequantize(dt);
            using var x = randn(2, 7, 512, generator: new TorchSharp.torch.Generator(3)).to(dt);
            using var want = F.linear(x, w);
            foreach (long tile in new long[] { 0, 16, 48, 100, 1000 })
            {
                using var got = q.Linear(x, dt, tile);
                Assert.Equal(want.shape, got.shape);
                Assert.Equal(dt, got.dtype);
                if (dt == ScalarType.Float32)
                {
                    double scale = want.abs().max().item<float>();
                    double diff = (got - want).abs().max().item<float>();
                    Assert.True(diff <= 1e-5 * scale, $"{type} fp32 tile {tile}: max |Δ| {diff:E2} of {scale:E2}");
                }
                else Assert.True(WithinOneBf16Step(got, want), $"{type} {dt} tile {tile}: more than one step from the whole-matrix linear");
            }
        }
        output.WriteLine($"{type}: tiled linear within one step of the whole decode for bf16/fp16, 1e-5 for fp32");
    }

    /// <summary>Types without the CPU decoder (here Q4_0) decode the whole matrix: the same bits as before.</summary>
    [Fact]
    public void OtherTypesDecodeWhole()
    {
        using var q = RandomBlocks(GgmlType.Q4_0, 24, 64, seed: 9, specialScales: false);
        using var x = randn(3, 64).to(ScalarType.BFloat16);
        using var w = q.Dequantize(ScalarType.BFloat16);
        using var want = F.linear(x, w);
        using var got = q.Linear(x, ScalarType.BFloat16, 8);
        Assert.True(SameBits(got, want));
        using var bad = RandomBlocks(GgmlType.Q8_0, 2, 32, seed: 1, specialScales: false);
        var flat = QuantizedTensor.FromBytes("v", GgmlType.Q8_0, [64], new byte[68]);
        Assert.Throws<InvalidOperationException>(() => flat.Linear(x, ScalarType.BFloat16));
        flat.Dispose();
    }

    /// <summary>
    /// The tiles run one per core with libtorch single-threaded on each (found libgomp's entry points in the bundled
    /// libtorch), and the caller's libtorch thread count is what it was; two linears at once from two threads share
    /// the helpers and both come out right.
    /// </summary>
    [Fact]
    public void OneTilePerCoreLeavesTheCallersThreadCount()
    {
        if (OperatingSystem.IsLinux()) Assert.True(GgmlTiledLinear.PerCore, "libgomp's omp_set_num_threads was not found through libtorch_cpu");
        int before = get_num_threads();
        using var q = RandomBlocks(GgmlType.Q8_0, 96, 256, seed: 21, specialScales: false);
        using var w = q.Dequantize(ScalarType.BFloat16);
        using var x = randn(5, 256).to(ScalarType.BFloat16);
        using var want = F.linear(x, w);
        using (var got = q.Linear(x, ScalarType.BFloat16, 16)) Assert.True(WithinOneBf16Step(got, want));
        Assert.Equal(before, get_num_threads());
        var results = new bool[2];
        var threads = Enumerable.Range(0, 2).Select(k => new Thread(() =>
        {
            for (int rep = 0; rep < 20; rep++)
            {
                using var got = q.Linear(x, ScalarType.BFloat16, 16);
                if (!WithinOneBf16Step(got, want)) return;
            }
            results[k] = true;
        })).ToList();
        threads.ForEach(t => t.Start());
        Assert.True(threads.All(t => t.Join(TimeSpan.FromSeconds(60))), "concurrent tiled linears did not finish");
        Assert.True(results.All(r => r), "a concurrent tiled linear differs");
        Assert.Equal(before, get_num_threads());
    }
}
