using System.Text.Json.Nodes;
using PixArtSharp.Models;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// taesd/lcm_taesd: tiny-pixart-lcm with its vae replaced by taesd/tiny-taesd (as <c>--vae &lt;dir&gt;</c> would), 4 LCM
/// steps, guidance 0, 64×64, seed 31. Bounds as expected/pipeline/: images atol 1e-4, final latents 5e-6·max|ref|.
/// diffusers decodes with <c>vae.decode(latents / vae.config.scaling_factor)</c> and TAESD's scaling_factor is 1.0,
/// so the decoder gets the final latents as they are.
/// </summary>
public class TaesdPipelineTests(ITestOutputHelper output)
{
    private const string Case = "taesd/lcm_taesd";

    /// <summary>
    /// The whole case through the pipeline, its VAE being a TAESD: a copy of tiny-pixart-lcm whose vae/ is
    /// tiny-taesd and whose model_index.json says so (["diffusers", "AutoencoderTiny"]), as a Hub pipeline shipping a
    /// TAESD would. Today the pipeline reads every vae/ as an AutoencoderKL config and refuses it.
    /// </summary>
    [Fact]
    public void PipelineWithTaesdVaeMatchesDiffusers()
    {
        using var dir = new TempDir();
        string root = dir.Path("pixart-lcm-taesd");
        CopyDirectory(Fixtures.Path("tiny-pixart-lcm"), root, skip: "vae");
        CopyDirectory(Fixtures.Path("taesd", "tiny-taesd"), Path.Combine(root, "vae"));
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "model_index.json")))!;
        index["vae"] = new JsonArray("diffusers", "AutoencoderTiny");
        File.WriteAllText(Path.Combine(root, "model_index.json"), index.ToJsonString());

        using var r = new Reference(Case);
        using var pipe = PixArtAlphaPipeline.FromPretrained(root);
        Assert.Equal(8, pipe.VaeScaleFactor);
        using var result = pipe.Generate(PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call")));
        using var refLatents = r["final_latents"];
        using var refImages = r["images"];
        double latentErr = Compare.CloseRelative(refLatents, result.Latents, 5e-6, "lcm_taesd final_latents");
        double imageErr = Compare.Close(refImages, result.Images!, 1e-4, "lcm_taesd images");
        output.WriteLine($"lcm_taesd via the pipeline: final_latents max|Δ| {latentErr:E3}, images max|Δ| {imageErr:E3}");
    }

    /// <summary>The case as the fixture made it: tiny-pixart-lcm with <c>PipelineOptions.Vae</c> = tiny-taesd (<c>--vae DIR</c>).</summary>
    [Fact]
    public void VaeFromElsewhereMatchesDiffusers()
    {
        using var r = new Reference(Case);
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-lcm"), new PipelineOptions { Vae = Fixtures.Path("taesd", "tiny-taesd") });
        Assert.Equal(1.0, pipe.VaeScalingFactor);
        using var result = pipe.Generate(PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call")));
        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, "lcm_taesd final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, 1e-4, "lcm_taesd images");
        Assert.IsType<PixArtSharp.Models.AutoencoderTiny>(pipe.LoadVae());
        output.WriteLine($"lcm_taesd with PipelineOptions.Vae: final_latents max|Δ| {latentErr:E3}, images max|Δ| {imageErr:E3}");
    }

    /// <summary>
    /// The same case without the pipeline's VAE wiring: the denoising loop does not involve the VAE, so the plain
    /// tiny-pixart-lcm pipeline gives the case's final latents from its seed; AutoencoderTiny.Decode of those
    /// latents / 1.0, then the pipeline's postprocess (x/2 + 0.5, clamp to [0, 1], NHWC), gives its images.
    /// </summary>
    [Fact]
    public void TaesdDecodeOfThePipelinesLatentsGivesTheCaseImages()
    {
        using var r = new Reference(Case);
        Assert.Equal(1.0, r.Json.GetProperty("derived").GetProperty("vae_scaling_factor").GetDouble());
        var request = PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call")) with { OutputType = OutputType.Latent };
        using var pipe = PixArtAlphaPipeline.FromPretrained(Fixtures.Path("tiny-pixart-lcm"));
        using var result = pipe.Generate(request);
        using var refLatents = r["final_latents"];
        double latentErr = Compare.CloseRelative(refLatents, result.Latents, 5e-6, "lcm_taesd final_latents");

        using var taesd = AutoencoderTiny.FromFolder(Fixtures.Path("taesd", "tiny-taesd"), null, ScalarType.Float32);
        Assert.Equal(1.0, taesd.Config.ScalingFactor);
        using var scope = NewDisposeScope();
        var decoded = taesd.Decode(result.Latents.div(taesd.Config.ScalingFactor));
        var images = decoded.div(2).add(0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous();
        using var refImages = r["images"];
        double imageErr = Compare.Close(refImages, images, 1e-4, "lcm_taesd images");
        output.WriteLine($"lcm_taesd: final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(refLatents):F1}), images max|Δ| {imageErr:E3}");
    }

    private static void CopyDirectory(string from, string to, string? skip = null)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from))
            File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        foreach (var d in Directory.GetDirectories(from))
            if (Path.GetFileName(d) != skip)
                CopyDirectory(d, Path.Combine(to, Path.GetFileName(d)));
    }
}
