using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// PixArtAlphaPipeline with the scheduler swapped for SA-Solver as PixArt's demo builds it (request.Scheduler =
/// "sa-solver"), both fixture cases from the seed alone: the initial latents and every step's noise continue one
/// generator stream. Images atol 1e-4, final latents and every step's latents ≤ 5e-6·max|ref| (fixture README).
/// </summary>
public class SASolverPipelineTests(TinyPipelines fixture, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    [Theory]
    [InlineData("sa_demo_25")]
    [InlineData("sa_10steps_n2")]
    public void MatchesDiffusersFromTheSeed(string name)
    {
        using var r = new Reference("expected/sa_solver/pipeline/" + name);
        Assert.Equal("tiny-pixart", r.Json.GetProperty("pipeline").GetString());
        var request = PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call")) with { Scheduler = "sa-solver" };
        var expectedTimesteps = r.Json.GetProperty("derived").GetProperty("timesteps").EnumerateArray().Select(x => x.GetInt64()).ToList();

        // Touch the file before Generate: the reader maps it lazily, and a mapping made inside the pipeline's
        // per-step dispose scope would be freed with it.
        double maxRef = Compare.MaxAbs(r["final_latents"]);
        var seen = new List<long>();
        double worstStep = 0;
        int stepsCompared = 0;
        using var result = fixture.Dpm.Generate(request, info =>
        {
            seen.Add(info.Timestep);
            string key = $"step.{info.Step - 1}.latents_out";
            if (r.Has(key))
            {
                worstStep = Math.Max(worstStep, Compare.CloseRelative(r[key], info.Latents, 5e-6, $"{name} {key}") / Compare.MaxAbs(r[key]));
                stepsCompared++;
            }
            return true;
        });

        Assert.Equal(expectedTimesteps, seen);
        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, name + " final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, 1e-4, name + " images");
        output.WriteLine($"{name}: final_latents max|Δ| {latentErr:E3} (max|ref| {maxRef:F1}), images max|Δ| {imageErr:E3}, " +
                         $"{stepsCompared} steps compared, worst step |Δ|/max|ref| {worstStep:E2}");
    }

    [Fact]
    public void RejectsCustomTimestepsAsDiffusersDoes()
    {
        var request = new GenerationRequest { Prompts = ["a cat"], Scheduler = "sa-solver", Timesteps = [999, 500], Height = 64, Width = 64, Seed = 1 };
        var e = Assert.Throws<ArgumentException>(() => fixture.Dpm.Generate(request));
        Assert.Contains("SASolverScheduler", e.Message);
    }
}
