using System.Diagnostics;
using PixArtSharp.Loading.Gguf;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>
/// Decode speed of full-size T5-XXL matrices (4096×10240 = wi_0/wi_1/wo, 4096×4096 = q/k/v/o) and the cost a
/// quantized layer adds per call. Timing only (set PIXART_GGUF_SPEED=1 to run; the default suite checks one
/// small decode so the path stays exercised). Random bytes are valid blocks: any bits decode.
/// </summary>
public class GgufDecodeSpeedTests(ITestOutputHelper output)
{
    private static bool Enabled => Environment.GetEnvironmentVariable("PIXART_GGUF_SPEED") == "1";

    private static QuantizedTensor RandomBlocks(GgmlType type, long rows, long cols, int seed) =>
        GgufTiledLinearTests.RandomBlocks(type, rows, cols, seed, specialScales: false);

    private double Time(Action a, int reps)
    {
        a();                                          // warm-up
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < reps; i++) a();
        return sw.Elapsed.TotalMilliseconds / reps;
    }

    [Theory]
    [InlineData("Q8_0")]
    [InlineData("Q4_K")]
    [InlineData("Q5_K")]
    [InlineData("Q6_K")]
    public void DecodeSpeed(string typeName)
    {
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        long rows = Enabled ? 10240 : 64, cols = Enabled ? 4096 : 512;
        using var q = RandomBlocks(type, rows, cols, 1);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            foreach (bool kernel in new[] { true, false })
            {
                double ms = Time(() => { using var w = q.Dequantize(dtype, kernel); }, Enabled ? 3 : 1);
                output.WriteLine($"{type} [{rows}×{cols}] → {dtype} ({(kernel ? "C# CPU decoder" : "libtorch ops")}): {ms:F1} ms "
                    + $"({rows * cols / ms / 1e6:F3} G values/s, {q.ByteLength / ms / 1e6:F2} GB/s of blocks), {get_num_threads()} torch threads, {Environment.ProcessorCount} cores");
            }
        using var full = q.Dequantize(ScalarType.Float32);
        Assert.Equal([rows, cols], full.shape);
        Assert.False(full.isnan().any().item<bool>());
    }

    /// <summary>One 4096×4096 Q8_0 projection on 120 tokens: decode + linear against linear on a held bf16 weight.</summary>
    [Fact]
    public void QuantizedLayerCostPerCall()
    {
        long d = Enabled ? 4096 : 256;
        using var q = RandomBlocks(GgmlType.Q8_0, d, d, 2);
        using var held = q.Dequantize(ScalarType.BFloat16);
        using var x = randn(1, 120, d).to(ScalarType.BFloat16);
        int reps = Enabled ? 5 : 1;
        double dense = Time(() => { using var y = F.linear(x, held); }, reps);
        double decode = Time(() => { using var w = q.Dequantize(ScalarType.BFloat16); }, reps);
        double both = Time(() => { using var w = q.Dequantize(ScalarType.BFloat16); using var y = F.linear(x, w); }, reps);
        output.WriteLine($"[{d}×{d}] Q8_0, x [1, 120, {d}] bf16: linear on held bf16 {dense:F1} ms; decode {decode:F1} ms; decode + linear {both:F1} ms; "
            + $"memory: {q.ByteLength / 1e6:F1} MB encoded (file pages), {d * d * 2 / 1e6:F1} MB bf16 while the layer runs (decoded straight to bf16 on the CPU)");
        using var w2 = q.Dequantize(ScalarType.BFloat16);
        using var y1 = F.linear(x, held);
        using var y2 = F.linear(x, w2);
        Assert.True(y1.eq(y2).all().item<bool>());
    }
    /// <summary>
    /// The tiled quantized linear (decode a tile of rows, multiply it while cached) against decode-whole-then-linear
    /// and against a held bf16 weight, for T5-XXL's two matrix shapes on 120 tokens, over tile sizes.
    /// </summary>
    [Theory]
    [InlineData("Q8_0", 10240, 4096)]
    [InlineData("Q8_0", 4096, 10240)]
    [InlineData("Q8_0", 4096, 4096)]
    [InlineData("Q5_K", 10240, 4096)]
    public void TiledLinearCostPerCall(string typeName, long outF, long inF)
    {
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        if (!Enabled) { outF /= 16; inF /= 16; }
        using var q = RandomBlocks(type, outF, inF, 3);
        using var held = q.Dequantize(ScalarType.BFloat16);
        using var x = randn(1, 120, inF).to(ScalarType.BFloat16);
        int reps = Enabled ? 5 : 1;
        double dense = Time(() => { using var y = F.linear(x, held); }, reps);
        double whole = Time(() => { using var w = q.Dequantize(ScalarType.BFloat16); using var y = F.linear(x, w); }, reps);
        var line = $"{type} [{outF}×{inF}], x [1, 120, {inF}] bf16: held bf16 {dense:F1} ms; decode whole + linear {whole:F1} ms; tiled:";
        foreach (long rows in new long[] { 0, 64, 128, 256, 512, 1024 })
            line += $" {(rows == 0 ? $"default {GgmlTiledLinear.DefaultTileRows(outF, inF, ScalarType.BFloat16, get_num_threads())}" : rows)} rows {Time(() => { using var y = q.Linear(x, ScalarType.BFloat16, rows); }, reps):F1} ms;";
        output.WriteLine(line);
        // The tiles' products sum in another order than one whole-matrix GEMM: at most one bf16 step apart.
        using var want = F.linear(x, held);
        using var got = q.Linear(x, ScalarType.BFloat16);
        Assert.True(GgufTiledLinearTests.WithinOneBf16Step(got, want));
    }
}
