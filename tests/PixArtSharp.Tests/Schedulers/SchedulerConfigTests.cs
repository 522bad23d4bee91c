using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;

namespace PixArtSharp.Tests.Schedulers;

public class SchedulerConfigTests
{
    [Fact]
    public void TinyLcmConfigLoadsWithAllKeys()
    {
        var c = SchedulerConfig.Load(Fixtures.Path("tiny-pixart-lcm", "scheduler"));
        Assert.Equal("LCMScheduler", c.ClassName);
        Assert.Equal(1000, c.NumTrainTimesteps);
        Assert.Equal(0.0001, c.BetaStart);
        Assert.Equal(0.02, c.BetaEnd);
        Assert.Equal("linear", c.BetaSchedule);
        Assert.Null(c.TrainedBetas);
        Assert.Equal(50, c.OriginalInferenceSteps);
        Assert.True(c.SetAlphaToOne);
        Assert.False(c.ClipSample);
        Assert.Equal(10.0, c.TimestepScaling);
        Assert.Equal("leading", c.TimestepSpacing);
        Assert.Equal("epsilon", c.PredictionType);
    }

    [Fact]
    public void RealLcmConfigLacksTimestepScalingSoTheDefaultTenApplies()
    {
        string path = Fixtures.Path("real-configs", "PixArt-LCM-XL-2-1024-MS", "scheduler");
        Assert.DoesNotContain("timestep_scaling", File.ReadAllText(Path.Combine(path, "scheduler_config.json")));
        var c = SchedulerConfig.Load(path);
        Assert.Equal(10.0, c.TimestepScaling);
        using var s = new LCMScheduler(c);
        s.SetTimesteps(4);
        Assert.Equal(new long[] { 999, 759, 499, 259 }, s.Timesteps);
    }

    [Theory]
    [InlineData("PixArt-XL-2-1024-MS")]
    [InlineData("PixArt-XL-2-512x512")]
    public void RealDpmConfigsLoadWithMinusInfinityAndDefaultFinalSigmas(string repo)
    {
        string path = Fixtures.Path("real-configs", repo, "scheduler");
        string text = File.ReadAllText(Path.Combine(path, "scheduler_config.json"));
        Assert.Contains("-Infinity", text);
        Assert.DoesNotContain("final_sigmas_type", text);
        var c = SchedulerConfig.Load(path);
        Assert.Equal("DPMSolverMultistepScheduler", c.ClassName);
        Assert.Equal(double.NegativeInfinity, c.LambdaMinClipped);
        Assert.Equal("zero", c.FinalSigmasType);
        Assert.Equal("dpmsolver++", c.AlgorithmType);
        Assert.Equal(2, c.SolverOrder);
        Assert.Null(c.VarianceType);
        using var s = new DPMSolverMultistepScheduler(c);
        s.SetTimesteps(14);
        Assert.Equal(new long[] { 999, 928, 856, 785, 714, 642, 571, 500, 428, 357, 285, 214, 143, 71 }, s.Timesteps);
        Assert.Equal(0f, s.Sigmas[^1]);
    }

    [Fact]
    public void TinyDpmConfigLoads()
    {
        var c = SchedulerConfig.Load(Fixtures.Path("tiny-pixart", "scheduler", "scheduler_config.json"));
        Assert.Equal("zero", c.FinalSigmasType);
        Assert.Equal("midpoint", c.SolverType);
        Assert.True(c.LowerOrderFinal);
        Assert.False(c.EulerAtFinal);
        Assert.False(c.UseKarrasSigmas);
        Assert.Equal("linspace", c.TimestepSpacing);
    }

    [Fact]
    public void MissingKeysTakeEachSchedulersOwnDiffusersDefaults()
    {
        var c = new SchedulerConfig();
        using var lcm = new LCMScheduler(c);
        using var dpm = new DPMSolverMultistepScheduler(new SchedulerConfig());
        // LCM: scaled_linear 0.00085..0.012 → β₀ = 0.00085; DPM: linear 0.0001..0.02.
        Assert.Equal(0.00085f, lcm.Betas[0].item<float>(), 1e-9f);
        Assert.Equal(0.012f, lcm.Betas[-1].item<float>(), 1e-8f);
        Assert.Equal(0.0001f, dpm.Betas[0].item<float>());
        Assert.Equal(0.02f, dpm.Betas[-1].item<float>());
    }
}
