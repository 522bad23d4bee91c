using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// Large images (PixArt-Σ 2K: 2048×2048, 16,384 tokens): the VAE decodes in tiles when a whole decode would not fit in
/// the memory available, and the tiled image stays close to the whole one.
/// </summary>
public class LargeImageTests(ITestOutputHelper output)
{
    [Fact]
    public void AutomaticTilesOnlyWhenTheWholeDecodeWouldNotFit()
    {
        const long GiB = 1L << 30;
        foreach (bool channelsLast in new[] { true, false })
        {
            // 1024 px (128 latents) is never tiled: it is one tile.
            Assert.Equal(0, PixArtPipeline.AutoTile(128, 128, ScalarType.Float32, 1 * GiB, channelsLast));
            // 2048 px, channels-last: ≈ 10.5 GB in bf16, ≈ 17.6 GB in fp32; NCHW ≈ 14.7 and 22.6 GB (measured
            // per-pixel peaks × 4.2 M pixels, with a quarter to spare).
            Assert.Equal(0, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 24 * GiB, channelsLast));
            Assert.Equal(128, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 12 * GiB, channelsLast));
            Assert.Equal(128, PixArtPipeline.AutoTile(256, 256, ScalarType.Float32, 20 * GiB, channelsLast));
            // Unknown memory (a GPU, or no /proc): whole.
            Assert.Equal(0, PixArtPipeline.AutoTile(256, 256, ScalarType.Float32, null, channelsLast));
        }
        // A 16 GB machine with 14 GiB free decodes a 2K bf16 image whole in the channels-last layout (measured peak
        // 7.42 GiB), in tiles in the NCHW one.
        Assert.Equal(0, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 14 * GiB, channelsLast: true));
        Assert.Equal(128, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 14 * GiB, channelsLast: false));
    }

    [Fact]
    public void A2kModelDecodesInTilesCloseToTheWholeDecode()
    {
        // tiny-pixart-sigma-2k at 256×256 (32×32 latents), decoded whole and in tiles of 16 latents (overlap 0.25).
        var request = new GenerationRequest { Prompts = ["a lighthouse"], Height = 256, Width = 256, UseResolutionBinning = false, NumInferenceSteps = 2, Seed = 3 };
        using var whole = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma-2k"), new PipelineOptions { VaeTileLatents = 0 });
        using var tiled = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma-2k"), new PipelineOptions { VaeTileLatents = 16 });
        using var a = whole.Generate(request);
        using var b = tiled.Generate(request);
        Assert.Equal(0, whole.LastDecodeTileLatents);    // what the bench reports as the tiles used
        Assert.Equal(16, tiled.LastDecodeTileLatents);
        Assert.Equal(0.0, Compare.MaxAbsDiff(a.Latents, b.Latents));
        using var diff = (a.Images! - b.Images!).abs();
        double max = diff.max().item<float>(), mean = diff.mean().item<float>();
        output.WriteLine($"2K tiny model, 256×256, tiles of 16 latents: image max |Δ| {max:E3}, mean {mean:E3} (images in [0, 1])");
        Assert.Equal(a.Images!.shape, b.Images!.shape);
        Assert.True(max > 0, "the tiled decode ran (it differs where tiles meet)");
        Assert.True(mean < 0.05, $"tiles change the image by {mean:E3} on average");
    }
}
