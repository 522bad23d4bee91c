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
        // 1024 px (128 latents) is never tiled: it is one tile.
        Assert.Equal(0, PixArtPipeline.AutoTile(128, 128, ScalarType.Float32, 1 * GiB));
        // 2048 px: ≈ 14.7 GB in bf16, ≈ 22.6 GB in fp32 (measured per-pixel peaks × 4.2 M pixels).
        Assert.Equal(0, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 24 * GiB));
        Assert.Equal(128, PixArtPipeline.AutoTile(256, 256, ScalarType.BFloat16, 12 * GiB));
        Assert.Equal(128, PixArtPipeline.AutoTile(256, 256, ScalarType.Float32, 20 * GiB));
        // Unknown memory (a GPU, or no /proc): whole.
        Assert.Equal(0, PixArtPipeline.AutoTile(256, 256, ScalarType.Float32, null));
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
        Assert.Equal(0.0, Compare.MaxAbsDiff(a.Latents, b.Latents));
        using var diff = (a.Images! - b.Images!).abs();
        double max = diff.max().item<float>(), mean = diff.mean().item<float>();
        output.WriteLine($"2K tiny model, 256×256, tiles of 16 latents: image max |Δ| {max:E3}, mean {mean:E3} (images in [0, 1])");
        Assert.Equal(a.Images!.shape, b.Images!.shape);
        Assert.True(max > 0, "the tiled decode ran (it differs where tiles meet)");
        Assert.True(mean < 0.05, $"tiles change the image by {mean:E3} on average");
    }
}
