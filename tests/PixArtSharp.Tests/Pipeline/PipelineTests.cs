using System.Globalization;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// The seven end-to-end fixture cases of PixArtAlphaPipeline.__call__, each run from its seed alone (not from
/// the stored initial latents): images within atol 1e-4 (2e-4 for lcm_binning) and final latents within
/// 5e-6·max|ref|, the fixture README's bounds.
/// </summary>
public class PipelineFixtureTests(TinyPipelines fixture, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    public static IEnumerable<object[]> Cases() =>
        new[] { "lcm_basic", "lcm_num_images_2", "lcm_8steps_cfg", "lcm_binning", "dpm_cfg", "dpm_batch2", "dpm_binning" }
            .Select(c => new object[] { c });

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesDiffusersFromTheSeed(string name)
    {
        using var r = new Reference("expected/pipeline/" + name);
        var call = r.Json.GetProperty("call");
        var pipe = r.Json.GetProperty("pipeline").GetString() == "tiny-pixart-lcm" ? Fixture.Lcm : Fixture.Dpm;
        var request = RequestFromCall(call);
        using var result = pipe.Generate(request);

        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, name + " final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, name == "lcm_binning" ? 2e-4 : 1e-4, name + " images");
        output.WriteLine($"{name}: final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(r["final_latents"]):F1}), images max|Δ| {imageErr:E3}");
    }

    internal static GenerationRequest RequestFromCall(System.Text.Json.JsonElement call)
    {
        var p = call.GetProperty("prompt");
        IReadOnlyList<string> prompts = p.ValueKind == System.Text.Json.JsonValueKind.Array
            ? p.EnumerateArray().Select(x => x.GetString()!).ToList() : [p.GetString()!];
        string gen = call.GetProperty("generator").GetString()!;
        long seed = long.Parse(gen[(gen.IndexOf("manual_seed(", StringComparison.Ordinal) + 12)..gen.IndexOf(')', gen.IndexOf("manual_seed(", StringComparison.Ordinal))], CultureInfo.InvariantCulture);
        IReadOnlyList<string> negative = [""];
        if (call.TryGetProperty("negative_prompt", out var n))
            negative = n.ValueKind == System.Text.Json.JsonValueKind.Array ? n.EnumerateArray().Select(x => x.GetString()!).ToList() : [n.GetString()!];
        return new GenerationRequest
        {
            Prompts = prompts,
            NegativePrompts = negative,
            NumInferenceSteps = call.TryGetProperty("num_inference_steps", out var s) ? s.GetInt32() : null,
            GuidanceScale = call.TryGetProperty("guidance_scale", out var g) ? g.GetDouble() : null,
            NumImagesPerPrompt = call.TryGetProperty("num_images_per_prompt", out var ni) ? ni.GetInt32() : 1,
            Height = call.TryGetProperty("height", out var h) ? h.GetInt32() : null,
            Width = call.TryGetProperty("width", out var w) ? w.GetInt32() : null,
            UseResolutionBinning = !call.TryGetProperty("use_resolution_binning", out var b) || b.GetBoolean(),
            CleanCaption = !call.TryGetProperty("clean_caption", out var cc) || cc.GetBoolean(),
            MaxSequenceLength = call.TryGetProperty("max_sequence_length", out var msl) ? msl.GetInt32() : null,
            Seed = seed,
        };
    }

    private TinyPipelines Fixture => fixture;
}
