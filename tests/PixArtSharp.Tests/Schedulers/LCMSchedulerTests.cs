using System.Globalization;
using System.Text.Json;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Schedulers;

public class LCMSchedulerTests(ITestOutputHelper output)
{
    [Fact]
    public void SetTimestepsMatchesDiffusersForEveryStepCount()
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Lcm();
        int checkedCount = 0;
        foreach (var entry in fx.Json.GetProperty("lcm").GetProperty("set_timesteps").EnumerateObject())
        {
            int n = int.Parse(entry.Name, CultureInfo.InvariantCulture);
            s.SetTimesteps(n);
            Assert.Equal(SchedulerFixtures.Longs(entry.Value.GetProperty("timesteps")), s.Timesteps);
            Assert.Equal(n, s.NumInferenceSteps);
            checkedCount++;
        }
        Assert.Equal(7, checkedCount);
    }

    [Fact]
    public void TablesAndConstantsMatch()
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Lcm();
        double err = Compare.Close(fx["lcm.alphas_cumprod"], s.AlphasCumprod, 0.0, "lcm.alphas_cumprod");
        output.WriteLine($"lcm.alphas_cumprod max |Δ| = {err:E3}");
        Assert.Equal(fx.Json.GetProperty("lcm").GetProperty("final_alpha_cumprod").GetDouble(), s.FinalAlphaCumprod.item<float>());
        Assert.Equal(fx.Json.GetProperty("lcm").GetProperty("init_noise_sigma").GetDouble(), s.InitNoiseSigma);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(8)]
    public void TeacherForcedStepsMatch(int n)
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Lcm();
        string name = $"lcm_{n}steps";
        var seq = fx.Sequence(name);
        s.SetTimesteps(n);
        using var gen = new Generator((ulong)SchedulerFixtures.StepGeneratorSeed(seq));
        // The same stream, to check the noise the scheduler draws (bitwise) against the stored draws.
        using var noiseGen = new Generator((ulong)SchedulerFixtures.StepGeneratorSeed(seq));
        var steps = seq.GetProperty("steps").EnumerateArray().ToArray();
        Assert.Equal(n, steps.Length);
        double worstDenoised = 0, worstPrev = 0;
        for (int i = 0; i < n; i++)
        {
            using var scope = torch.NewDisposeScope();
            long t = steps[i].GetProperty("timestep").GetInt64();
            Assert.Equal(s.Timesteps[i], t);
            var (cSkip, cOut) = s.GetScalingsForBoundaryConditionDiscrete(t);
            Assert.Equal((float)steps[i].GetProperty("c_skip").GetDouble(), cSkip);
            Assert.Equal((float)steps[i].GetProperty("c_out").GetDouble(), cOut);

            var sample = fx[i == 0 ? $"{name}.sample.0" : $"{name}.prev_sample.{i - 1}"];
            var (prev, denoised) = s.Step(fx[$"{name}.model_output.{i}"], t, sample, gen);
            Assert.Equal(i + 1, s.StepIndex);
            worstDenoised = Math.Max(worstDenoised, Compare.CloseRelative(fx[$"{name}.denoised.{i}"], denoised, 1e-6, $"{name}.denoised.{i}"));
            worstPrev = Math.Max(worstPrev, Compare.CloseRelative(fx[$"{name}.prev_sample.{i}"], prev, 1e-6, $"{name}.prev_sample.{i}"));

            bool drawn = steps[i].GetProperty("noise_drawn").GetBoolean();
            Assert.Equal(i != n - 1, drawn);
            if (drawn)
                Assert.Equal(0.0, Compare.MaxAbsDiff(fx[$"{name}.noise.{i}"], torch.randn([2, 4, 6, 8], generator: noiseGen)));
            else
                Assert.Equal(0.0, Compare.MaxAbsDiff(denoised, prev));   // the last step returns the denoised sample
        }
        // Both generators have drawn the same amount: the scheduler drew exactly once per non-final step.
        Assert.Equal(0.0, Compare.MaxAbsDiff(torch.randn(8, generator: noiseGen), torch.randn(8, generator: gen)));
        output.WriteLine($"{name}: max |Δ| denoised {worstDenoised:E3}, prev_sample {worstPrev:E3}");
    }

    [Fact]
    public void StrengthTableFromImg2ImgFixturesMatchesIncludingTheError()
    {
        var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("expected", "img2img", "timesteps.json"))).RootElement;
        using var s = SchedulerFixtures.Lcm();
        int cases = 0, errors = 0;
        foreach (var c in json.GetProperty("lcm").EnumerateArray())
        {
            int n = c.GetProperty("num_inference_steps").GetInt32();
            double strength = c.GetProperty("strength").GetDouble();
            if (c.TryGetProperty("error", out _))
            {
                var e = Assert.Throws<ArgumentException>(() => s.SetTimesteps(n, strength: strength));
                Assert.StartsWith(c.GetProperty("message").GetString()!, e.Message);
                errors++;
            }
            else
            {
                s.SetTimesteps(n, strength: strength);
                Assert.Equal(SchedulerFixtures.Longs(c.GetProperty("timesteps")), s.Timesteps);
            }
            cases++;
        }
        Assert.Equal(1, errors);
        output.WriteLine($"{cases} (n, strength) cases");
    }

    [Fact]
    public void AddNoiseMatchesImg2ImgFixture()
    {
        using var r = new Reference("expected/img2img/i2i_lcm_s05");
        using var s = SchedulerFixtures.Lcm();
        s.SetTimesteps(4, strength: 0.5);
        Assert.Equal(new long[] { 499, 379, 259, 139 }, s.Timesteps);
        using var t = torch.tensor(new[] { s.Timesteps[0] });
        using var noisy = s.AddNoise(r["init_latents"], r["add_noise.noise"], t);
        double err = Compare.Close(r["initial_latents"], noisy, 1e-5, "initial_latents");
        output.WriteLine($"i2i_lcm_s05 initial_latents max |Δ| = {err:E3}");
    }

    [Fact]
    public void CustomTimestepsAndStrengthFollowDiffusers()
    {
        using var s = SchedulerFixtures.Lcm();
        s.SetTimesteps(null, timesteps: [999, 499, 99]);
        Assert.Equal(new long[] { 999, 499, 99 }, s.Timesteps);
        Assert.True(s.CustomTimesteps);
        Assert.Equal(3, s.NumInferenceSteps);
        // strength 0.5: init = min(int(3·0.5), 3) = 1 → t_start 2; num_inference_steps stays 3 as in diffusers.
        s.SetTimesteps(null, timesteps: [999, 499, 99], strength: 0.5);
        Assert.Equal(new long[] { 99 }, s.Timesteps);
        Assert.Equal(3, s.NumInferenceSteps);
    }

    [Fact]
    public void InvalidArgumentsRaiseLikeDiffusers()
    {
        using var s = SchedulerFixtures.Lcm();
        Assert.Contains("exactly one", Assert.Throws<ArgumentException>(() => s.SetTimesteps(null)).Message);
        Assert.Contains("only pass one", Assert.Throws<ArgumentException>(() => s.SetTimesteps(4, timesteps: [999])).Message);
        Assert.Contains("descending", Assert.Throws<ArgumentException>(() => s.SetTimesteps(null, timesteps: [999, 999])).Message);
        Assert.Contains("must start before", Assert.Throws<ArgumentException>(() => s.SetTimesteps(null, timesteps: [1000, 5])).Message);
        Assert.Contains("cannot be larger than `self.config.train_timesteps`", Assert.Throws<ArgumentException>(() => s.SetTimesteps(1001)).Message);
        // 51 steps: 50 // 51 = 0 → the skipping-step error comes first.
        Assert.Contains("is smaller than `num_inference_steps`: 51", Assert.Throws<ArgumentException>(() => s.SetTimesteps(51)).Message);
        // Only reachable with strength > 1: origin has int(50·2) = 100 entries, 100 // 60 ≥ 1, but 60 > 50.
        Assert.Contains("cannot be larger than `original_inference_steps`",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(60, strength: 2.0)).Message);
        Assert.Contains("cannot be larger than `self.config.train_timesteps`",
            Assert.Throws<ArgumentException>(() => s.SetTimesteps(4, originalInferenceSteps: 1001)).Message);
        Assert.Throws<InvalidOperationException>(() =>
        {
            using var fresh = SchedulerFixtures.Lcm();
            using var x = torch.zeros(1, 4, 2, 2);
            fresh.Step(x, 999, x);
        });
    }

    [Fact]
    public void OriginalInferenceStepsOverrideChangesTheOriginSchedule()
    {
        using var s = SchedulerFixtures.Lcm();
        // k = 1000 // 10 = 100, origin 99..999, reversed, indices floor(linspace(0, 10, 4, endpoint=False)) = 0, 2, 5, 7.
        s.SetTimesteps(4, originalInferenceSteps: 10);
        Assert.Equal(new long[] { 999, 799, 499, 299 }, s.Timesteps);
    }

    [Fact]
    public void BeginIndexAndStepIndexTracking()
    {
        using var s = SchedulerFixtures.Lcm();
        s.SetTimesteps(4);
        Assert.Null(s.StepIndex);
        Assert.Equal(2, s.IndexForTimestep(499));
        Assert.Throws<ArgumentException>(() => s.IndexForTimestep(500));
        using var x = torch.zeros(1, 4, 2, 2);
        using var gen = new Generator(0);
        // Without a begin index, the first step finds its index from the timestep.
        var (p, d) = s.Step(x, 499, x, gen);
        p.Dispose(); d.Dispose();
        Assert.Equal(3, s.StepIndex);
        s.SetTimesteps(4);
        s.SetBeginIndex(1);
        (p, d) = s.Step(x, 759, x, gen);
        p.Dispose(); d.Dispose();
        Assert.Equal(2, s.StepIndex);
        s.SetTimesteps(4);
        Assert.Null(s.BeginIndex);
        Assert.Null(s.StepIndex);
    }
}
