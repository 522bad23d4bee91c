using PixArtSharp.Loading;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Schedulers;

public class DDPMSchedulerTests(ITestOutputHelper output)
{
    private static DDPMScheduler Dmd() => DDPMScheduler.FromConfig(Fixtures.Path("tiny-pixart-dmd", "scheduler"));

    private static DDPMScheduler FromJson(string json)
    {
        using var dir = new TempDir();
        return DDPMScheduler.FromConfig(dir.WriteText("scheduler_config.json", json));
    }

    [Fact]
    public void BetaSchedulesMatchTheTablesOfTheOtherSchedulers()
    {
        using var fx = new SchedulerFixtures();
        // The DMD config (linear 1e-4 … 0.02) is the fixtures' DPM-Solver and LCM schedule.
        using var dmd = Dmd();
        Assert.Equal(0.0, Compare.MaxAbsDiff(fx["dpm.alphas_cumprod"], dmd.AlphasCumprod));
        Assert.Equal(0.0, Compare.MaxAbsDiff(fx["lcm.alphas_cumprod"], dmd.AlphasCumprod));
        // scaled_linear (the real PixArt-LCM's) and zero-terminal-SNR rescaling read the same keys as LCMScheduler.
        const string scaledJson = """{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": true}""";
        using var scaled = FromJson(scaledJson);
        using var dir = new TempDir();
        using var lcm = LCMScheduler.FromConfig(dir.WriteText("scheduler_config.json", scaledJson));
        Assert.Equal(0.0, Compare.MaxAbsDiff(lcm.AlphasCumprod, scaled.AlphasCumprod));
        Assert.Equal(0.0, scaled.AlphasCumprod[-1].item<float>());
        using var cosine = FromJson("""{"beta_schedule": "squaredcos_cap_v2"}""");
        using var cosineBetas = NoiseSchedule.BetasForAlphaBar(1000);
        Assert.Equal(0.0, Compare.MaxAbsDiff(cosineBetas, cosine.Betas));
        // sigmoid: sigmoid(linspace(-6, 6)) scaled into [beta_start, beta_end]; symmetric about the middle.
        using var sigmoid = FromJson("""{"beta_schedule": "sigmoid"}""");
        float[] b = sigmoid.Betas.data<float>().ToArray();
        Assert.Equal(0.0001 + 0.0199 / (1 + Math.Exp(6)), b[0], 1e-8);
        Assert.Equal(0.0001 + 0.0199 / (1 + Math.Exp(-6)), b[^1], 1e-8);
        using var trained = FromJson("""{"trained_betas": [0.1, 0.2, 0.3], "num_train_timesteps": 3}""");
        Assert.Equal([0.9f, 0.9f * 0.8f, 0.9f * 0.8f * 0.7f], trained.AlphasCumprod.data<float>().ToArray(), new FloatTolerance(1e-7f));
    }

    [Fact]
    public void ConfigDefaultsAreDiffusers()
    {
        using var d = FromJson("{}");
        Assert.True(d.ClipSample);                       // DDPM's default, unlike LCM's
        Assert.Equal("fixed_small", d.VarianceType);
        Assert.Equal("leading", d.TimestepSpacing);
        Assert.Equal(999L, d.Timesteps[0]);
        using var dmd = Dmd();
        Assert.False(dmd.ClipSample);                    // the DMD config says false
        Assert.Equal(20, dmd.DefaultSteps);
        Assert.Equal(4.5, dmd.DefaultGuidance);
        var bad = Assert.Throws<ArgumentException>(() => FromJson("""{"prediction_type": "flow"}"""));
        Assert.Contains("must be one of `epsilon`, `sample` or `v_prediction`", bad.Message);
    }

    [Fact]
    public void FactoryBuildsItFromModelIndexAndByName()
    {
        var folder = ModelFolder.Open(Fixtures.Path("tiny-pixart-dmd"));
        using var s = SchedulerFactory.Create(folder);
        Assert.IsType<DDPMScheduler>(s);
        Assert.Equal("DDPMScheduler", s.ClassName);
        Assert.Contains("ddpm", SchedulerFactory.Names);
        using var o = SchedulerFactory.Create(ModelFolder.Open(Fixtures.Path("tiny-pixart")), "ddpm");
        Assert.IsType<DDPMScheduler>(o);
    }

    [Theory]
    [InlineData("leading", 20, new long[] { 950, 900, 850, 800, 750, 700, 650, 600, 550, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50, 0 })]
    [InlineData("leading", 3, new long[] { 666, 333, 0 })]
    [InlineData("linspace", 3, new long[] { 999, 500, 0 })]      // round(499.5) = 500 (half to even)
    [InlineData("linspace", 4, new long[] { 999, 666, 333, 0 })]
    [InlineData("trailing", 4, new long[] { 999, 749, 499, 249 })]
    [InlineData("trailing", 3, new long[] { 999, 666, 332 })]     // round(1000 − 666.67) = 333 → 332
    public void SetTimestepsSpacings(string spacing, int n, long[] expected)
    {
        using var s = FromJson($$"""{"timestep_spacing": "{{spacing}}"}""");
        s.SetTimesteps(n);
        Assert.Equal(expected, s.Timesteps);
        Assert.Equal(n, s.NumInferenceSteps);
        Assert.False(s.CustomTimesteps);
        Assert.Equal(expected[0] - 1000 / n, s.PreviousTimestep(expected[0]));   // T // n, whatever the spacing
    }

    [Fact]
    public void StepsOffsetShiftsLeadingTimesteps()
    {
        using var s = FromJson("""{"steps_offset": 1}""");
        s.SetTimesteps(4);
        Assert.Equal([751L, 501, 251, 1], s.Timesteps);
    }

    [Fact]
    public void CustomTimestepsAndTheirErrors()
    {
        using var s = Dmd();
        s.SetTimesteps(null, [400]);
        Assert.Equal([400L], s.Timesteps);
        Assert.True(s.CustomTimesteps);
        Assert.Equal(-1, s.PreviousTimestep(400));
        s.SetTimesteps(null, [999, 500, 20]);
        Assert.Equal(20, s.PreviousTimestep(500));
        Assert.Equal("`custom_timesteps` must be in descending order.",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(null, [400, 400])).Message.Split(" (Parameter")[0]);
        Assert.Equal("`timesteps` must start before `self.config.train_timesteps`: 1000.",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(null, [1000, 10])).Message.Split(" (Parameter")[0]);
        Assert.StartsWith("Can only pass one of `num_inference_steps` or `custom_timesteps`.",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(2, [400])).Message);
        Assert.StartsWith("`num_inference_steps`: 1001 cannot be larger than `self.config.train_timesteps`: 1000",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(1001)).Message);
        using var bad = FromJson("""{"timestep_spacing": "uniform"}""");
        Assert.StartsWith("uniform is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'.",
            Assert.Throws<ArgumentException>(() => bad.SetTimesteps(5)).Message);
    }

    /// <summary>
    /// The DMD fixture's one step, teacher-forced: the stored transformer input and noise prediction at t = 400 give
    /// the stored pred_original_sample (the pipeline's result) and prev_sample, and the step draws its variance noise
    /// from the pipeline's generator right after the initial latents.
    /// </summary>
    [Fact]
    public void DmdOneStepMatchesTheFixture()
    {
        using var r = new Reference("expected/family/dmd_one_step");
        using var s = Dmd();
        s.SetTimesteps(null, [400]);
        using var gen = new Generator(15);
        using var initial = torch.randn([1, 4, 8, 8], generator: gen);
        Assert.Equal(0.0, Compare.MaxAbsDiff(r["initial_latents"], initial));
        Assert.Equal(0.0, Compare.MaxAbsDiff(r["initial_latents"], r["step.0.transformer_input"]));

        using var outp = s.StepWithOutput(r["step.0.noise_pred"], 400, r["step.0.transformer_input"], NoiseSource.Of(gen));
        Assert.NotNull(outp.PredOriginalSample);
        double x0 = Compare.Close(r["step.0.pred_original_sample"], outp.PredOriginalSample, 1e-5, "step.0.pred_original_sample");
        double fin = Compare.Close(r["final_latents"], outp.PredOriginalSample, 1e-5, "final_latents");
        double prev = Compare.Close(r["step.0.latents_out"], outp.PrevSample, 1e-5, "step.0.latents_out");
        output.WriteLine($"dmd one step: pred_original_sample {x0:E3}, final_latents {fin:E3}, prev_sample {prev:E3} (max |ref| {Compare.MaxAbs(r["final_latents"]):F2})");

        // Exactly one [1, 4, 8, 8] draw was taken from the generator (diffusers draws for every t > 0).
        using var replay = new Generator(15);
        torch.randn([1, 4, 8, 8], generator: replay).Dispose();
        torch.randn([1, 4, 8, 8], generator: replay).Dispose();
        Assert.Equal(0.0, Compare.MaxAbsDiff(torch.randn([4], generator: replay), torch.randn([4], generator: gen)));

        // Through IScheduler.Step (what the pipeline calls) the result is the same, and x̂₀ is PredOriginalSample.
        IScheduler i = s;
        using var gen2 = new Generator(15);
        torch.randn([1, 4, 8, 8], generator: gen2).Dispose();
        using (torch.NewDisposeScope())
        {
            var p2 = i.Step(r["step.0.noise_pred"], 400, r["step.0.transformer_input"], NoiseSource.Of(gen2));
            Assert.Equal(0.0, Compare.MaxAbsDiff(outp.PrevSample, p2));
            Assert.NotNull(i.PredOriginalSample);
            Assert.Equal(0.0, Compare.MaxAbsDiff(r["final_latents"], i.PredOriginalSample!));
        }
        using var lcm = SchedulerFixtures.Lcm();
        Assert.Null(((IScheduler)lcm).PredOriginalSample);   // schedulers without x̂₀ in their output
    }

    /// <summary>
    /// A multistep DDPM step against formulas (6), (7) and (15) of arXiv 2006.11239 evaluated in float64 from the
    /// same ᾱ table and the same noise draw: epsilon with clipping, v-prediction, sample prediction, fixed_large.
    /// </summary>
    [Theory]
    [InlineData("epsilon", "fixed_small", true)]
    [InlineData("epsilon", "fixed_small", false)]
    [InlineData("v_prediction", "fixed_large", false)]
    [InlineData("sample", "fixed_small_log", false)]
    public void MultistepStepFollowsThePaper(string prediction, string variance, bool clip)
    {
        using var s = FromJson($$"""{"prediction_type": "{{prediction}}", "variance_type": "{{variance}}", "clip_sample": {{(clip ? "true" : "false")}}, "clip_sample_range": 1.5}""");
        s.SetTimesteps(10);
        long t = s.Timesteps[2], tp = s.Timesteps[3];
        Assert.Equal(tp, s.PreviousTimestep(t));
        using var g = new Generator(7);
        using var x = torch.randn([2, 4, 5, 3], generator: g);
        using var m = torch.randn([2, 4, 5, 3], generator: g);
        using var gs = new Generator(99);
        using var gz = new Generator(99);
        using var outp = s.StepWithOutput(m, t, x, NoiseSource.Of(gs));
        using var z = torch.randn([2, 4, 5, 3], generator: gz);

        double a = s.AlphasCumprod[t].item<float>(), ap = s.AlphasCumprod[tp].item<float>();
        double alphaT = a / ap, betaT = 1 - alphaT;
        using var xd = x.to(ScalarType.Float64);
        using var md = m.to(ScalarType.Float64);
        var x0 = prediction switch
        {
            "epsilon" => (xd - Math.Sqrt(1 - a) * md) / Math.Sqrt(a),
            "v_prediction" => Math.Sqrt(a) * xd - Math.Sqrt(1 - a) * md,
            _ => md.clone(),
        };
        if (clip) x0 = x0.clamp(-1.5, 1.5);
        double tilde = (1 - ap) / (1 - a) * betaT;
        double sigma = variance switch { "fixed_large" => Math.Sqrt(betaT), "fixed_small_log" => Math.Sqrt(tilde), _ => Math.Sqrt(tilde) };
        using var expectedPrev = Math.Sqrt(ap) * betaT / (1 - a) * x0 + Math.Sqrt(alphaT) * (1 - ap) / (1 - a) * xd + sigma * z.to(ScalarType.Float64);
        double e0 = Compare.Close(x0, outp.PredOriginalSample, 2e-5 * Math.Max(1, Compare.MaxAbs(x0)), "pred_original_sample");
        double e1 = Compare.Close(expectedPrev, outp.PrevSample, 2e-5 * Math.Max(1, Compare.MaxAbs(expectedPrev)), "prev_sample");
        output.WriteLine($"{prediction}/{variance}/clip={clip}: x0 {e0:E3}, prev {e1:E3}");
        x0.Dispose();
        if (clip) Assert.True(Compare.MaxAbs(outp.PredOriginalSample) <= 1.5);
    }

    [Fact]
    public void LastStepDrawsNoNoiseAndLearnedRangeUsesTheVarianceChannels()
    {
        using var s = FromJson("""{"variance_type": "learned_range", "clip_sample": false}""");
        s.SetTimesteps(4);   // 750, 500, 250, 0
        using var x = torch.ones([1, 2, 2, 2]);
        using var eps = torch.zeros([1, 2, 2, 2]);
        using var v = torch.full([1, 2, 2, 2], 1.0f);      // frac = 1: the upper bound, log β_t
        using var both = torch.cat([eps, v], 1);
        using var g = new Generator(3);
        using var gz = new Generator(3);
        using var outp = s.StepWithOutput(both, 250, x, NoiseSource.Of(g));
        using var z = torch.randn([1, 2, 2, 2], generator: gz);
        double a = s.AlphasCumprod[250].item<float>(), ap = s.AlphasCumprod[0].item<float>();
        double beta = 1 - a / ap;
        using var mean = (Math.Sqrt(ap) * beta / (1 - a) / Math.Sqrt(a) + Math.Sqrt(a / ap) * (1 - ap) / (1 - a)) * x.to(ScalarType.Float64);
        using var expected = mean + Math.Sqrt(beta) * z.to(ScalarType.Float64);
        Compare.Close(expected, outp.PrevSample, 1e-5, "learned_range prev_sample");

        // t = 0: no draw at all; the generator stays where it was.
        using var last = s.StepWithOutput(both, 0, x, NoiseSource.Of(g));
        Assert.Equal(0.0, Compare.MaxAbsDiff(torch.randn([3], generator: gz), torch.randn([3], generator: g)));
        Assert.Equal(0.0, Compare.MaxAbsDiff(last.PrevSample, last.PredOriginalSample!));   // ᾱ_prev = 1: μ̃ = x̂₀

        var e = Assert.Throws<ArgumentException>(() => s.Step(eps, 250, x, null));
        Assert.Contains("needs the model's variance channels", e.Message);
    }

    [Fact]
    public void ThresholdingReplacesClipping()
    {
        using var s = FromJson("""{"thresholding": true, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 3.0, "clip_sample": true}""");
        s.SetTimesteps(5);
        using var g = new Generator(11);
        using var x = torch.randn([2, 4, 3, 3], generator: g) * 4;
        using var m = torch.randn([2, 4, 3, 3], generator: g);
        using var outp = s.StepWithOutput(m, s.Timesteps[0], x, NoiseSource.Of(g));
        double a = s.AlphasCumprod[s.Timesteps[0]].item<float>();
        using var raw = (x - (float)Math.Sqrt(1 - a) * m) / (float)Math.Sqrt(a);
        using var expected = NoiseSchedule.ThresholdSample(raw, 0.9, 3.0);
        Compare.Close(expected, outp.PredOriginalSample, 1e-5, "thresholded x0");
        Assert.True(Compare.MaxAbs(outp.PredOriginalSample) <= 1.0 + 1e-6);   // x/s with |x| ≤ s
        Assert.True(Compare.MaxAbs(raw) > 1.5);                                // so it did something
    }

    [Fact]
    public void AddNoiseIsTheForwardProcess()
    {
        using var s = Dmd();
        using var x0 = torch.full([2, 1, 2, 2], 2.0f);
        using var n = torch.full([2, 1, 2, 2], -1.0f);
        using var t = torch.tensor(new long[] { 10, 900 });
        using var y = s.AddNoise(x0, n, t);
        for (int i = 0; i < 2; i++)
        {
            double a = s.AlphasCumprod[i == 0 ? 10 : 900].item<float>();
            Assert.Equal(2 * Math.Sqrt(a) - Math.Sqrt(1 - a), y[i, 0, 0, 0].item<float>(), 1e-6);
        }
    }
}

internal sealed class FloatTolerance(float tol) : IEqualityComparer<float>
{
    public bool Equals(float a, float b) => Math.Abs(a - b) <= tol;
    public int GetHashCode(float f) => 0;
}
