using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Bench;

/// <summary>
/// Measures the machine's matrix-multiply rate in the benchmark's own dtype, device and thread setting, in the same
/// run as the model timings, so "achieved vs floor" compares like with like (the rate varies by ±20 % between runs
/// and with other load on the machine). The shapes are the transformer's feed-forward products at the bench's token
/// count: [M, 1152]·[1152, 4608] and [M, 4608]·[4608, 1152] — the bulk of its FLOPs.
/// </summary>
internal static class GemmProbe
{
    /// <summary>Median GFLOP/s over <paramref name="repeats"/> timed products of each shape (after three warm-ups each).</summary>
    /// <param name="rows">M, the token count (batch × tokens); capped to 8192 to keep the probe short.</param>
    public static double MeasureGflops(ScalarType dtype, Device device, long rows = 4096, long width = 1152, int repeats = 5)
    {
        if (repeats < 1) throw new ArgumentOutOfRangeException(nameof(repeats), repeats, "repeats must be at least 1.");
        rows = Math.Clamp(rows, 256, 8192);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var gen = new Generator(1234);
        var rates = new List<double>();
        foreach (var (k, n) in new[] { (width, 4 * width), (4 * width, width) })
        {
            var a = randn([rows, k], ScalarType.Float32, generator: gen).to(dtype, device);
            var b = randn([n, k], ScalarType.Float32, generator: gen).to(dtype, device);
            double flops = 2.0 * rows * k * n;
            // Three warm-ups (oneDNN's first calls and fresh pages are slow). Even so, at the start of a run the probe
            // reads lower than the same probe at its end (bf16, load ≈ 2: 417–468 vs 505–706 GFLOP/s), for a reason
            // not yet found; the result reports both.
            const int warmups = 3;
            for (int i = 0; i < warmups + repeats; i++)
            {
                var sw = Stopwatch.StartNew();
                using var c = nn.functional.linear(a, b);            // as the model calls it: x·Wᵀ
                TorchRuntime.Synchronize(device);
                double s = sw.Elapsed.TotalSeconds;
                if (i >= warmups) rates.Add(flops / s / 1e9);
            }
        }
        rates.Sort();
        return rates.Count % 2 == 1 ? rates[rates.Count / 2] : (rates[rates.Count / 2 - 1] + rates[rates.Count / 2]) / 2;
    }
}
