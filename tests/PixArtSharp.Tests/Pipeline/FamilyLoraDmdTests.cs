using PixArtSharp.Loading.Lora;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// The pipeline-level fixture cases of expected/family/ for one-step DMD (DDPMScheduler) and the Σ LoRA adapter.
/// Tolerances (README): final latents |Δ| ≤ 5e-6·max|ref| (DMD: atol 1e-5, they are the x̂₀ prediction), images atol 1e-4.
/// </summary>
public class FamilyLoraDmdTests(ITestOutputHelper output)
{
    private static GenerationRequest RequestFromCall(System.Text.Json.JsonElement call)
    {
        var request = PipelineFixtureTests.RequestFromCall(call);
        if (call.TryGetProperty("timesteps", out var ts))
            request = request with { Timesteps = ts.EnumerateArray().Select(x => x.GetInt32()).ToList(), NumInferenceSteps = null };
        return request;
    }

    /// <summary>
    /// tiny-pixart-dmd: PixArtAlphaPipeline + DDPMScheduler, timesteps=[400], guidance 1, one step; diffusers returns
    /// step(...).pred_original_sample. (prev_sample differs from it by 1e-10·z here — ᾱ_prev = 1 — so this case cannot
    /// tell the two apart; DDPMSchedulerTests checks PredOriginalSample itself.)
    /// </summary>
    [Fact]
    public void DmdOneStep()
    {
        using var r = new Reference("expected/family/dmd_one_step");
        using var pipe = PixArtAlphaPipeline.FromPretrained(Fixtures.Path("tiny-pixart-dmd"));
        using var result = pipe.Generate(RequestFromCall(r.Json.GetProperty("call")));
        double latentErr = Compare.Close(r["final_latents"], result.Latents, 1e-5, "dmd_one_step final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, 1e-4, "dmd_one_step images");
        output.WriteLine($"dmd_one_step: final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(r["final_latents"]):F1}), images max|Δ| {imageErr:E3}");
    }

    [Theory]
    [InlineData("lora_peft_scale1", "peft")]
    [InlineData("lora_peft_scale1", "kohya.safetensors")]
    [InlineData("lora_scale_half", "peft")]
    [InlineData("lora_scale_half", "kohya.safetensors")]
    public void SigmaWithLora(string name, string adapter)
    {
        using var r = new Reference($"expected/family/{name}");
        double scale = r.Json.GetProperty("lora").GetProperty("scale").GetDouble();
        var options = new PipelineOptions { Loras = [new LoraSpec(Fixtures.Path("tiny-pixart-sigma-lora", adapter), scale)] };
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma"), options);
        using var result = pipe.Generate(RequestFromCall(r.Json.GetProperty("call")));
        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, $"{name}/{adapter} final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, 1e-4, $"{name}/{adapter} images");
        output.WriteLine($"{name} ({adapter}): final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(r["final_latents"]):F1}), images max|Δ| {imageErr:E3}");
    }
}
