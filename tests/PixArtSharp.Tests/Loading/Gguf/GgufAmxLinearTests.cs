using System.Runtime.Intrinsics.X86;
using PixArtSharp.Loading;
using PixArtSharp.Loading.Gguf;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>
/// The Q8_0 × bf16 linear on AMX (<see cref="GgmlAmxLinear"/>): its decoder writes the VNNI layout of exactly the
/// values the other decoders give, its products equal the decoded-then-<c>F.linear</c> ones within one bf16 step,
/// and it runs between oneDNN's own AMX matmuls on the same threads.
/// </summary>
public class GgufAmxLinearTests(ITestOutputHelper output)
{
    /// <summary>What /proc/cpuinfo says about AMX-BF16 (the path's availability must follow it on Linux x64).</summary>
    private static bool CpuHasAmx() =>
        OperatingSystem.IsLinux() && File.Exists("/proc/cpuinfo")
        && File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) is { } flags
        && flags.Split(' ').Contains("amx_bf16") && flags.Split(' ').Contains("amx_tile");

    [Fact]
    public void AvailableExactlyWhereTheCpuHasAmx()
    {
        bool expected = CpuHasAmx() && Avx512BW.IsSupported && Environment.GetEnvironmentVariable("PIXART_GGUF_AMX") != "0";
        Assert.Equal(expected, GgmlAmxLinear.IsAvailable);
        Assert.Equal(expected, GgmlAmxLinear.Supports(GgmlType.Q8_0, 4096, 4096, ScalarType.BFloat16));
        Assert.Equal(expected, GgmlAmxLinear.Supports(GgmlType.Q5_K, 10240, 4096, ScalarType.BFloat16));
        // Only the types with a CPU decoder, into bf16, whole 64-row slices.
        Assert.False(GgmlAmxLinear.Supports(GgmlType.Q8_0, 4096, 4096, ScalarType.Float32));
        Assert.False(GgmlAmxLinear.Supports(GgmlType.Q4_0, 4096, 4096, ScalarType.BFloat16));
        Assert.False(GgmlAmxLinear.Supports(GgmlType.Q8_0, 100, 4096, ScalarType.BFloat16));
        output.WriteLine($"AMX path available: {GgmlAmxLinear.IsAvailable}");
    }

    /// <summary>
    /// packed[j · 64 + n] = row n's bf16 values 2j | 2j + 1 &lt;&lt; 16, the bits of the CPU decoder's bf16 (NaN, ±∞,
    /// subnormal and ±0 scales included): the layout oneDNN's pack_B writes for a [K, 64] B.
    /// </summary>
    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_K")]
    [InlineData("Q5_K")]
    [InlineData("Q6_K")]
    public unsafe void DecodePackedIsTheVnniLayoutOfTheDecodedRows(string typeName)
    {
        if (!Avx512BW.IsSupported) { output.WriteLine("no AVX-512 here: the AMX path never runs"); return; }
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        const int rows = 64, cols = 512;
        using var q = GgufTiledLinearTests.RandomBlocks(type, rows, cols, seed: 31, specialScales: true);
        using var decoded = q.Dequantize(ScalarType.BFloat16).contiguous();                   // [64, 512]
        var bits = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(decoded.bytes).ToArray();
        using var raw = q.Raw!.contiguous();
        var packed = new uint[rows * cols / 2];
        fixed (byte* r = raw.bytes)
        fixed (uint* p = packed)
            GgmlAmxLinear.DecodePacked(type, r, cols, p);
        int nan = 0;
        for (int j = 0; j < cols / 2; j++)
            for (int n = 0; n < rows; n++)
            {
                uint want = bits[n * cols + 2 * j] | (uint)bits[n * cols + 2 * j + 1] << 16;
                Assert.True(want == packed[j * rows + n], $"pair {j} of row {n}: {packed[j * rows + n]:X8}, want {want:X8}");
                if ((want & 0x7FFF) > 0x7F80) nan++;
            }
        Assert.True(nan > 0, "the special scales should have produced NaNs");
    }

    /// <summary>
    /// Within one bf16 step of <c>F.linear</c> on the decoded weight, for prompt-like row counts (1, 25 and a batched
    /// 2 × 13) and inner sizes of T5's two kinds (4096-like and 10240-like, here 1024 and 2560).
    /// </summary>
    [Theory]
    [InlineData("Q8_0", 1, 192, 1024)]
    [InlineData("Q8_0", 25, 128, 2560)]
    [InlineData("Q8_0", 26, 256, 1024)]
    [InlineData("Q4_K", 25, 128, 2560)]
    [InlineData("Q5_K", 26, 192, 1024)]
    [InlineData("Q6_K", 1, 64, 512)]
    [InlineData("Q8_0", 600, 64, 512)]
    public void MatchesTheDecodedLinear(string typeName, int tokens, int outFeatures, int inFeatures)
    {
        if (!GgmlAmxLinear.IsAvailable) { output.WriteLine("no AMX here: the tiled path runs (GgufTiledLinearTests)"); return; }
        var type = Enum.Parse<GgmlType>(typeName);
        using var q = GgufTiledLinearTests.RandomBlocks(type, outFeatures, inFeatures, seed: tokens, specialScales: false);
        using var w = q.Dequantize(ScalarType.BFloat16);
        using var x = (tokens is 26 or 600 ? randn(2, tokens / 2, inFeatures, generator: new Generator(4)) : randn(tokens, inFeatures, generator: new Generator(4))).to(ScalarType.BFloat16);
        using var want = F.linear(x, w);
        using var got = q.Linear(x, ScalarType.BFloat16);
        Assert.Equal(want.shape, got.shape);
        Assert.Equal(ScalarType.BFloat16, got.dtype);
        Assert.True(GgufTiledLinearTests.WithinOneBf16Step(got, want), "more than one bf16 step from the decoded linear");
        using var same = got.eq(want).to(ScalarType.Float32).mean();
        output.WriteLine($"{type} {tokens} × {inFeatures} → {outFeatures}: {same.item<float>():P2} of outputs bit-equal to F.linear");
    }

    /// <summary>
    /// oneDNN's AMX matmuls and this path alternate on the same threads (a T5 layer's attention matmuls between its
    /// projections): libtorch's cached tile configuration must be dropped each time, or the next micro-kernel call
    /// faults and ends the process. A second thread, and the caller's libtorch thread count, too.
    /// </summary>
    [Fact]
    public void AlternatesWithLibtorchMatmulsOnTheSameThreads()
    {
        int before = get_num_threads();
        using var q = GgufTiledLinearTests.RandomBlocks(GgmlType.Q8_0, 128, 1024, seed: 7, specialScales: false);
        using var w = q.Dequantize(ScalarType.BFloat16);
        using var x = randn(25, 1024, generator: new Generator(8)).to(ScalarType.BFloat16);
        using var want = F.linear(x, w);
        using var big = randn(512, 1024).to(ScalarType.BFloat16);
        void Round()
        {
            for (int i = 0; i < 3; i++)
            {
                using (var got = q.Linear(x, ScalarType.BFloat16)) Assert.True(GgufTiledLinearTests.WithinOneBf16Step(got, want));
                using var mm = matmul(big, big.t());                                                // oneDNN, AMX where present
            }
        }
        Round();
        var t = new Thread(Round);
        t.Start();
        t.Join();
        Assert.Equal(before, get_num_threads());
    }

    /// <summary>The path's first use in a fresh process (no libtorch matmul has set AMX up before it): runs, and gives
    /// the same values as later calls and as <c>F.linear</c>.</summary>
    [Fact]
    public void WorksAsTheFirstMatrixProductOfAProcess()
    {
        var r = ChildProcess.Run("quantized-linear-first");
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("ok", r.Stdout);
        Assert.Contains(GgmlAmxLinear.IsAvailable ? "path amx" : "path tiled", r.Stdout);
    }

    /// <summary>
    /// A whole Q8_0 T5 (widths that take the AMX path) against the same T5 with its weights decoded and held in bf16:
    /// close within bf16 rounding, and the forward leaves the caller's libtorch thread count as it was.
    /// </summary>
    [Fact]
    public void AQuantizedT5MatchesItsDecodedWeights()
    {
        var config = new T5Config { VocabSize = 64, DModel = 256, DKv = 32, DFf = 640, NumLayers = 2, NumHeads = 8, FeedForwardProj = "gated-gelu" };
        using var dir = new TempDir();
        string path = dir.Path("q8.gguf");
        using (var g = new Generator(12))
            GgufWriter.WriteT5(path, config, (key, shape) => randn(shape, generator: g).mul_(0.05), GgmlType.Q8_0);
        using var quantized = T5EncoderModel.FromGguf(path, ScalarType.BFloat16);
        var decoded = new Dictionary<string, Tensor>();
        using (var f = GgufFile.Open(path))
            foreach (var t in f.TensorList)
                decoded[GgufT5.ToTransformersName(t.Name, true)] = f.Dequantize(t.Name);
        using var w = Weights.FromTensors(decoded, ScalarType.BFloat16);
        using var held = new T5EncoderModel(config, w);
        using var ids = tensor(new long[,] { { 5, 17, 33, 2, 1, 0, 0, 0 } });
        using var mask = tensor(new long[,] { { 1, 1, 1, 1, 1, 0, 0, 0 } });
        int before = get_num_threads();
        using var a = quantized.forward(ids, mask);
        Assert.Equal(before, get_num_threads());
        using var b = held.forward(ids, mask);
        double scale = Compare.MaxAbs(b), err = Compare.MaxAbsDiff(b, a);
        Assert.True(err <= 1e-3 * scale, $"max |Δ| {err:E2} of {scale:E2}");   // measured: 0 (the same fp32 sums as oneDNN)
        output.WriteLine($"Q8_0 T5 (AMX path: {GgmlAmxLinear.IsAvailable}) vs decoded bf16 T5: max |Δ| {err:E2} of {scale:E2}");
        foreach (var t in decoded.Values) t.Dispose();
    }
}
