using System.Globalization;
using System.Text.Json;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Schedulers;

public class DPMSolverMultistepSchedulerTests(ITestOutputHelper output)
{
    [Fact]
    public void SetTimestepsGivesTimestepsAndSigmasExactly()
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Dpm();
        int checkedCount = 0;
        foreach (var entry in fx.Json.GetProperty("dpm").GetProperty("set_timesteps").EnumerateObject())
        {
            int n = int.Parse(entry.Name, CultureInfo.InvariantCulture);
            s.SetTimesteps(n);
            Assert.Equal(SchedulerFixtures.Longs(entry.Value.GetProperty("timesteps")), s.Timesteps);
            // The stored sigmas are float32 values written as Python floats: compare as float32, exactly.
            float[] expected = entry.Value.GetProperty("sigmas").EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();
            Assert.Equal(n + 1, expected.Length);
            Assert.Equal(expected, s.Sigmas);
            Assert.Equal(n, s.NumInferenceSteps);
            checkedCount++;
        }
        Assert.Equal(7, checkedCount);
    }

    [Fact]
    public void TablesMatch()
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Dpm();
        // Exact, except λ_t: the reference's vectorised log (SLEEF, ≤ 1 ulp) and the C library's logf may differ by
        // an ulp (|λ| ≤ 5.1, ulp ≤ 4.8e-7). λ_t only feeds lambda_min_clipped.
        foreach (var (name, table, atol) in new[] { ("alphas_cumprod", s.AlphasCumprod, 0.0), ("alpha_t", s.AlphaT, 0.0), ("sigma_t", s.SigmaT, 0.0), ("lambda_t", s.LambdaT, 5e-7) })
        {
            double err = Compare.Close(fx[$"dpm.{name}"], table, atol, $"dpm.{name}");
            output.WriteLine($"dpm.{name} max |Δ| = {err:E3}");
        }
        Assert.Equal(fx.Json.GetProperty("dpm").GetProperty("init_noise_sigma").GetDouble(), s.InitNoiseSigma);
    }

    [Theory]
    [InlineData(14)]
    [InlineData(20)]
    [InlineData(25)]
    public void TeacherForcedStepsMatch(int n)
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Dpm();
        string name = $"dpm_{n}steps";
        var steps = fx.Sequence(name).GetProperty("steps").EnumerateArray().ToArray();
        Assert.Equal(n, steps.Length);
        s.SetTimesteps(n);
        double worst = 0, worstRel = 0;
        for (int i = 0; i < n; i++)
        {
            using var scope = torch.NewDisposeScope();
            long t = steps[i].GetProperty("timestep").GetInt64();
            Assert.Equal(s.Timesteps[i], t);
            var sample = fx[i == 0 ? $"{name}.sample.0" : $"{name}.prev_sample.{i - 1}"];
            var prev = s.Step(fx[$"{name}.model_output.{i}"], t, sample);
            Assert.Equal(i + 1, s.StepIndex);
            Assert.Equal(steps[i].GetProperty("lower_order_nums_after").GetInt32(), s.LowerOrderNums);
            var expected = fx[$"{name}.prev_sample.{i}"];
            double err = Compare.CloseRelative(expected, prev, 1e-6, $"{name}.prev_sample.{i}");
            worst = Math.Max(worst, err);
            worstRel = Math.Max(worstRel, err / Compare.MaxAbs(expected));
        }
        output.WriteLine($"{name}: max |Δ| prev_sample {worst:E3} (max relative to max|ref| {worstRel:E3})");
    }

    [Fact]
    public void OneStepIsFirstOrderAndReturnsTheDataPrediction()
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Dpm();
        s.SetTimesteps(1);
        Assert.Equal(new long[] { 999 }, s.Timesteps);
        var sample = fx["dpm_14steps.sample.0"];
        var eps = fx["dpm_14steps.model_output.0"];
        // x₀ = (x − σ_t·ε)/α_t at σ = σ₉₉₉, with α_t = 1/√(σ²+1), σ_t = σ·α_t.
        float sigma = s.Sigmas[0];
        float alpha = 1f / MathF.Sqrt(sigma * sigma + 1f);
        using var x0 = (sample - sigma * alpha * eps) / alpha;
        using var prev = s.Step(eps, 999, sample);
        double err = Compare.CloseRelative(x0, prev, 1e-6, "one-step prev_sample vs x0");
        output.WriteLine($"1 step: prev_sample vs x0 max |Δ| = {err:E3}");
        Assert.Equal(1, s.LowerOrderNums);
    }

    [Fact]
    public void Img2ImgSchedulesAndAddNoiseMatchFixtures()
    {
        var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("expected", "img2img", "timesteps.json"))).RootElement;
        using var s = SchedulerFixtures.Dpm();
        foreach (var c in json.GetProperty("dpm").EnumerateArray())
        {
            s.SetTimesteps(c.GetProperty("num_inference_steps").GetInt32());
            int tStart = c.GetProperty("t_start").GetInt32();
            Assert.Equal(SchedulerFixtures.Longs(c.GetProperty("timesteps")), s.Timesteps[tStart..]);
        }

        using var r = new Reference("expected/img2img/i2i_dpm_s06");
        s.SetTimesteps(14);
        s.SetBeginIndex(6);
        using var t = torch.tensor(new[] { s.Timesteps[6] });
        using var noisy = s.AddNoise(r["init_latents"], r["add_noise.noise"], t);
        double err = Compare.Close(r["initial_latents"], noisy, 1e-5, "initial_latents");
        output.WriteLine($"i2i_dpm_s06 initial_latents max |Δ| = {err:E3}");
        // Without a begin index the sigma comes from the timestep's position: the same here.
        s.SetTimesteps(14);
        using var noisy2 = s.AddNoise(r["init_latents"], r["add_noise.noise"], t);
        Assert.Equal(0.0, Compare.MaxAbsDiff(noisy, noisy2));
    }

    [Fact]
    public void CustomTimestepsTakeTableSigmas()
    {
        using var s = SchedulerFixtures.Dpm();
        s.SetTimesteps(null, timesteps: [999, 500, 250]);
        Assert.Equal(new long[] { 999, 500, 250 }, s.Timesteps);
        Assert.Equal(3, s.NumInferenceSteps);
        s.SetTimesteps(4);   // 999, 749, 500, 250
        float[] reference = s.Sigmas;
        s.SetTimesteps(null, timesteps: [999, 500, 250]);
        Assert.Equal(new[] { reference[0], reference[2], reference[3], 0f }, s.Sigmas);
    }

    [Fact]
    public void LeadingAndTrailingSpacing()
    {
        // leading: ratio = 1000 // 11 = 90 → arange(0, 11)·90 reversed, last dropped.
        using var lead = new DPMSolverMultistepScheduler(new SchedulerConfig { TimestepSpacing = "leading", StepsOffset = 1 });
        lead.SetTimesteps(10);
        Assert.Equal(new long[] { 901, 811, 721, 631, 541, 451, 361, 271, 181, 91 }, lead.Timesteps);
        // trailing: round(arange(1000, 0, −1000/14)) − 1.
        using var trail = new DPMSolverMultistepScheduler(new SchedulerConfig { TimestepSpacing = "trailing" });
        trail.SetTimesteps(14);
        Assert.Equal(new long[] { 999, 928, 856, 785, 713, 642, 570, 499, 428, 356, 285, 213, 142, 70 }, trail.Timesteps);
        trail.SetTimesteps(10);
        Assert.Equal(new long[] { 999, 899, 799, 699, 599, 499, 399, 299, 199, 99 }, trail.Timesteps);
        // sigma_min final sigma = σ at timestep 0.
        using var smin = new DPMSolverMultistepScheduler(new SchedulerConfig { FinalSigmasType = "sigma_min" });
        smin.SetTimesteps(null, timesteps: [0]);
        Assert.Equal(smin.Sigmas[0], smin.Sigmas[1]);
        Assert.True(smin.Sigmas[1] > 0);
    }

    [Fact]
    public void UnsupportedOrInvalidConfigurationsFailClearly()
    {
        Assert.Throws<NotSupportedException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { UseKarrasSigmas = true }));
        Assert.Throws<NotSupportedException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { UseLuLambdas = true }));
        Assert.Throws<NotSupportedException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { AlgorithmType = "sde-dpmsolver++" }));
        Assert.Throws<NotSupportedException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { SolverOrder = 3 }));
        Assert.Throws<NotSupportedException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { VarianceType = "learned_range" }));
        Assert.Throws<ArgumentException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { AlgorithmType = "nope" }));
        Assert.Throws<ArgumentException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { SolverType = "nope" }));
        // diffusers: dpmsolver with final_sigmas_type "zero" is a ValueError.
        Assert.Throws<ArgumentException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { AlgorithmType = "dpmsolver" }));
        Assert.Throws<ArgumentException>(() => new DPMSolverMultistepScheduler(new SchedulerConfig { BetaSchedule = "nope" }));

        using var s = SchedulerFixtures.Dpm();
        Assert.Throws<ArgumentException>(() => s.SetTimesteps(null));
        Assert.Throws<ArgumentException>(() => s.SetTimesteps(4, timesteps: [999]));
        using var bad = new DPMSolverMultistepScheduler(new SchedulerConfig { TimestepSpacing = "nope" });
        Assert.Throws<ArgumentException>(() => bad.SetTimesteps(4));
        using var nullFinal = new DPMSolverMultistepScheduler(new SchedulerConfig { FinalSigmasType = null });
        Assert.Throws<ArgumentException>(() => nullFinal.SetTimesteps(4));
        using var x = torch.zeros(1, 4, 2, 2);
        Assert.Throws<InvalidOperationException>(() => s.Step(x, 999, x));
    }

    [Fact]
    public void StepUpcastsHalfPrecisionSamplesAndReturnsTheModelDtype()
    {
        using var fx = new SchedulerFixtures();
        using var s32 = SchedulerFixtures.Dpm();
        using var s16 = SchedulerFixtures.Dpm();
        s32.SetTimesteps(14);
        s16.SetTimesteps(14);
        using var sample = fx["dpm_14steps.sample.0"];
        using var eps = fx["dpm_14steps.model_output.0"];
        using var sampleBf = sample.to(ScalarType.BFloat16);
        using var epsBf = eps.to(ScalarType.BFloat16);
        using var p32 = s32.Step(eps, 999, sample);
        using var p16 = s16.Step(epsBf, 999, sampleBf);
        Assert.Equal(ScalarType.BFloat16, p16.dtype);
        // bf16 has 8 mantissa bits: agreement to ~1 % of the value range.
        double err = Compare.MaxAbsDiff(p32, p16.to(ScalarType.Float32));
        Assert.True(err < 0.02 * Compare.MaxAbs(p32), $"bf16 step differs by {err}");
    }
}
