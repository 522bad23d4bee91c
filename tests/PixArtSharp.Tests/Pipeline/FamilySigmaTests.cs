using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// The PixArt-Σ cases of expected/family/ (diffusers 0.29.2 PixArtSigmaPipeline), each from its seed: the class comes
/// from model_index.json, max_sequence_length defaults to 300, no micro-conditions although sample_size is 128,
/// interpolation_scale from the config, the SDXL VAE's scaling_factor 0.13025, and the 2048 bins for sample_size 256.
/// Tolerances (README): final latents |Δ| ≤ 5e-6·max|ref|, images atol 1e-4 (2e-4 for sigma_binning).
/// </summary>
public class FamilySigmaTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("sigma_dpm_cfg")]
    [InlineData("sigma_long_prompt")]
    [InlineData("sigma_binning")]
    [InlineData("sigma2k_small")]
    public void MatchesDiffusersFromTheSeed(string name)
    {
        using var r = new Reference("expected/family/" + name);
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path(r.Json.GetProperty("pipeline").GetString()!));
        Assert.IsType<PixArtSigmaPipeline>(pipe);
        Assert.Equal(300, pipe.DefaultMaxSequenceLength);
        using var result = pipe.Generate(PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call")));
        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, name + " final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, name == "sigma_binning" ? 2e-4 : 1e-4, name + " images");
        output.WriteLine($"{name}: final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(r["final_latents"]):F1}), images max|Δ| {imageErr:E3}");
    }

    [Fact]
    public void TheLongPromptUsesMoreThan120Tokens()
    {
        using var r = new Reference("expected/family/sigma_long_prompt");
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma"));
        var call = r.Json.GetProperty("call");
        var (positive, negative) = pipe.EncodePrompt([call.GetProperty("prompt").GetString()!], true, [call.GetProperty("negative_prompt").GetString()!], cleanCaption: true);
        using (positive) using (negative)
        {
            Assert.Equal(300, positive.Embeds.shape[1]);
            Assert.True(positive.AttentionMask.sum().item<long>() > 120, "the 204-token prompt is not cut at α's 120");
            // The stored prompt_embeds are the guidance batch, cat([negative, positive]).
            using var embeds = TorchSharp.torch.cat([negative!.Embeds, positive.Embeds], 0);
            using var mask = TorchSharp.torch.cat([negative.AttentionMask, positive.AttentionMask], 0);
            Compare.CloseAtTokens(r["prompt_embeds"], embeds, mask, 1e-5, "sigma_long_prompt prompt_embeds");
        }
    }

    [Fact]
    public void The2048BinsClassifyAsDiffusers()
    {
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Fixtures.Path("expected", "family", "aspect_ratio_2048_bin.json")));
        var bins = doc.RootElement.GetProperty("bins").EnumerateObject().ToList();
        Assert.Equal(bins.Select(b => b.Name), AspectRatioBins.AspectRatio2048Bin.Select(b => b.Ratio));
        for (int i = 0; i < bins.Count; i++)
        {
            Assert.Equal(bins[i].Value[0].GetDouble(), AspectRatioBins.AspectRatio2048Bin[i].Height);
            Assert.Equal(bins[i].Value[1].GetDouble(), AspectRatioBins.AspectRatio2048Bin[i].Width);
        }
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma-2k"));
        Assert.Same(AspectRatioBins.AspectRatio2048Bin, pipe.AspectRatioBins);
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            var (h, w) = AspectRatioBins.ClassifyHeightWidthBin(c.GetProperty("height").GetInt32(), c.GetProperty("width").GetInt32(), pipe.AspectRatioBins);
            Assert.Equal((c.GetProperty("binned")[0].GetInt32(), c.GetProperty("binned")[1].GetInt32()), (h, w));
        }
    }

    [Fact]
    public void ASigmaFolderOpenedAsAlphaKeepsAlphaDefaults()
    {
        // As diffusers' PixArtAlphaPipeline.from_pretrained(sigma_folder): the class decides the call's defaults.
        using var pipe = PixArtAlphaPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma"));
        Assert.Equal(120, pipe.DefaultMaxSequenceLength);
        Assert.Equal(0.13025, pipe.VaeScalingFactor);
    }
}
