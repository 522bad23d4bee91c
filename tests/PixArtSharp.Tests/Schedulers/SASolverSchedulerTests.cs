using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Schedulers;

/// <summary>
/// SASolverScheduler against expected/sa_solver/ (diffusers v0.29.2, built as PixArt's demo builds it from the
/// DPM-Solver++ config of tiny-pixart).
/// </summary>
public class SASolverSchedulerTests(ITestOutputHelper output)
{
    private static readonly Lazy<JsonElement> _json = new(() =>
        // Python's json writes a bare -Infinity (lambda_min_clipped); quote it so System.Text.Json can parse the file.
        JsonDocument.Parse(Regex.Replace(File.ReadAllText(Fixtures.Path("expected", "sa_solver", "schedulers.json")),
            @"([:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])", "$1\"$2\"")).RootElement);

    private static JsonElement Json => _json.Value;

    private static SASolverScheduler Demo(Func<long, double>? tau = null) =>
        SASolverScheduler.FromConfigFile(Fixtures.Path("tiny-pixart", "scheduler", "scheduler_config.json"), tauFunc: tau);

    [Fact]
    public void ConfigFromDpmFileMatchesEffectiveConfig()
    {
        using var s = Demo();
        var c = s.Config;
        var e = Json.GetProperty("config");
        Assert.Equal(e.GetProperty("num_train_timesteps").GetInt32(), c.NumTrainTimesteps);
        Assert.Equal(e.GetProperty("beta_start").GetDouble(), c.BetaStart);
        Assert.Equal(e.GetProperty("beta_end").GetDouble(), c.BetaEnd);
        Assert.Equal(e.GetProperty("beta_schedule").GetString(), c.BetaSchedule);
        Assert.Null(c.TrainedBetas);
        Assert.Equal(e.GetProperty("predictor_order").GetInt32(), c.PredictorOrder);
        Assert.Equal(e.GetProperty("corrector_order").GetInt32(), c.CorrectorOrder);
        Assert.Equal(e.GetProperty("prediction_type").GetString(), c.PredictionType);
        Assert.Equal(e.GetProperty("thresholding").GetBoolean(), c.Thresholding);
        Assert.Equal(e.GetProperty("algorithm_type").GetString(), c.AlgorithmType);
        Assert.Equal(e.GetProperty("lower_order_final").GetBoolean(), c.LowerOrderFinal);
        Assert.Equal(e.GetProperty("use_karras_sigmas").GetBoolean(), c.UseKarrasSigmas);
        Assert.Equal(double.NegativeInfinity, c.LambdaMinClipped);
        Assert.Null(c.VarianceType);
        Assert.Equal(e.GetProperty("timestep_spacing").GetString(), c.TimestepSpacing);
        Assert.Equal(e.GetProperty("steps_offset").GetInt32(), c.StepsOffset);
        Assert.Equal(Json.GetProperty("init_noise_sigma").GetDouble(), s.InitNoiseSigma);
        Assert.Equal(Json.GetProperty("order").GetInt32(), s.Order);
    }

    [Fact]
    public void TauFuncIsTheDemoFunction()
    {
        var tau = SASolverScheduler.DefaultTauFunc;
        Assert.Equal(0, tau(199));
        Assert.Equal(1, tau(200));
        Assert.Equal(1, tau(800));
        Assert.Equal(0, tau(801));
        Assert.Equal(0, tau(999));
    }

    [Fact]
    public void TablesMatch()
    {
        using var s = Demo();
        using var r = new Reference("expected/sa_solver/scheduler_steps");
        var tables = new (string Name, float[] Ours)[]
        {
            ("sa.alphas_cumprod", s.AlphasCumprod), ("sa.alpha_t", s.AlphaT), ("sa.sigma_t", s.SigmaT),
            ("sa.lambda_t", s.LambdaT), ("sa.sigmas_train", s.SigmasTrain),
        };
        foreach (var (name, ours) in tables)
        {
            using var expected = r[name];
            using var actual = torch.tensor(ours);
            double err = Compare.CloseRelative(expected, actual, 1e-6, name);
            output.WriteLine($"{name}: max |Δ| = {err:E3}");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(10)]
    [InlineData(14)]
    [InlineData(20)]
    [InlineData(25)]
    [InlineData(40)]
    public void SetTimestepsTauAndOrders(int n)
    {
        var e = Json.GetProperty("set_timesteps").GetProperty(n.ToString(CultureInfo.InvariantCulture));
        using var s = Demo();
        s.SetTimesteps(n);

        Assert.Equal(e.GetProperty("timesteps").EnumerateArray().Select(x => x.GetInt64()).ToArray(), s.Timesteps);
        // Sigmas are float32; the JSON holds their exact float64 values.
        Assert.Equal(e.GetProperty("sigmas").EnumerateArray().Select(x => (float)x.GetDouble()).ToArray(), s.Sigmas);
        Assert.Equal(0.010001329705119133f, s.Sigmas[^1]);
        Assert.Equal(e.GetProperty("tau").EnumerateArray().Select(x => x.GetDouble()).ToArray(),
            s.Timesteps.Select(t => s.TauFunc(t)).ToArray());

        // The orders are decided inside step(): run the steps on a 1-element sample and record them.
        var expectedPredictor = e.GetProperty("predictor_order").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var expectedCorrector = e.GetProperty("corrector_order").EnumerateArray()
            .Select(x => x.ValueKind == JsonValueKind.Null ? (int?)null : x.GetInt32()).ToArray();
        using var g = new torch.Generator(0);
        var sample = torch.zeros(1, 1, 1, 1);
        var eps = torch.zeros(1, 1, 1, 1);
        int? correctorForNextStep = null;
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(expectedCorrector[i], correctorForNextStep);
            var next = s.Step(eps, s.Timesteps[i], sample, g);
            sample.Dispose();
            sample = next;
            Assert.Equal(expectedPredictor[i], s.ThisPredictorOrder);
            correctorForNextStep = s.ThisCorrectorOrder;
        }
        Assert.Equal(n, s.StepIndex);
        sample.Dispose();
        eps.Dispose();
    }

    [Theory]
    [InlineData("sa_1steps")]
    [InlineData("sa_2steps")]
    [InlineData("sa_4steps")]
    [InlineData("sa_10steps")]
    [InlineData("sa_25steps")]
    [InlineData("sa_ode_10steps")]
    public void TeacherForcedSequence(string name)
    {
        var seq = Json.GetProperty("sequences").EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
        int n = seq.GetProperty("num_inference_steps").GetInt32();
        bool ode = seq.GetProperty("tau_func").GetString()!.StartsWith("lambda t: 0", StringComparison.Ordinal);
        long seed = long.Parse(Regex.Match(seq.GetProperty("step_generator").GetString()!, @"manual_seed\((\d+)\)").Groups[1].Value, CultureInfo.InvariantCulture);
        var steps = seq.GetProperty("steps").EnumerateArray().ToArray();

        using var r = new Reference("expected/sa_solver/scheduler_steps");
        using var s = Demo(ode ? _ => 0 : null);
        s.SetTimesteps(n);
        using var g = new torch.Generator((ulong)seed);
        // The file maps its tensors lazily on the first load: do that outside the per-step dispose scopes.
        using (r[$"{name}.sample.0"]) { }

        double maxX0 = 0, maxCorrected = 0, maxPrev = 0, maxRelPrev = 0;
        for (int i = 0; i < n; i++)
        {
            using var scope = torch.NewDisposeScope();
            long t = steps[i].GetProperty("timestep").GetInt64();
            Assert.Equal(t, s.Timesteps[i]);
            // Teacher forcing: the stored input of each step (sample.0, then the stored prev_sample of the step before).
            var sample = i == 0 ? r[$"{name}.sample.0"] : r[$"{name}.prev_sample.{i - 1}"];
            var prev = s.Step(r[$"{name}.model_output.{i}"], t, sample, g);

            Assert.Equal(steps[i].GetProperty("predictor_order").GetInt32(), s.ThisPredictorOrder);
            // The noise is the step generator's stream, bit for bit.
            Assert.Equal(0.0, Compare.MaxAbsDiff(r[$"{name}.noise.{i}"], s.LastNoise!));

            var refPrev = r[$"{name}.prev_sample.{i}"];
            double bound = 1e-6 * Compare.MaxAbs(refPrev);
            var refX0 = r[$"{name}.x0_pred.{i}"];
            maxX0 = Math.Max(maxX0, Compare.CloseRelative(refX0, s.ModelOutputs[^1]!, 1e-6, $"{name} x0_pred.{i}"));
            if (i > 0)
                maxCorrected = Math.Max(maxCorrected, Compare.CloseRelative(r[$"{name}.corrected_sample.{i}"], s.LastSample!, 1e-6, $"{name} corrected_sample.{i}"));
            double err = Compare.Close(refPrev, prev, bound, $"{name} prev_sample.{i}");
            maxPrev = Math.Max(maxPrev, err);
            maxRelPrev = Math.Max(maxRelPrev, err / Compare.MaxAbs(refPrev));
        }
        output.WriteLine($"{name}: max |Δ| x0_pred {maxX0:E3}, corrected_sample {maxCorrected:E3}, prev_sample {maxPrev:E3} " +
                         $"(≤ {maxRelPrev:E2}·max|prev_sample.i|; max|prev| overall {seq.GetProperty("max_abs_prev_sample").GetDouble():F1})");
    }

    [Fact]
    public void AddNoiseUsesSqrtAlphasCumprod()
    {
        using var s = Demo();
        using var r = new Reference("expected/sa_solver/scheduler_steps");
        using var acp = r["sa.alphas_cumprod"].to(ScalarType.Float64);
        using var g = new torch.Generator(7);
        using var x0 = torch.randn(new long[] { 3, 4, 2, 2 }, generator: g);
        using var noise = torch.randn(new long[] { 3, 4, 2, 2 }, generator: g);
        long[] ts = [999, 500, 0];
        using var timesteps = torch.tensor(ts);
        using var noisy = s.AddNoise(x0, noise, timesteps);
        for (int b = 0; b < ts.Length; b++)
        {
            double a = acp[ts[b]].item<double>();
            using var expected = Math.Sqrt(a) * x0[b].to(ScalarType.Float64) + Math.Sqrt(1 - a) * noise[b].to(ScalarType.Float64);
            Compare.Close(expected, noisy[b], 1e-6, $"add_noise t={ts[b]}");
        }
    }

    [Fact]
    public void RejectsCustomTimestepsAndMissingSteps()
    {
        using var s = Demo();
        Assert.Equal("timesteps", Assert.Throws<ArgumentException>(() => s.SetTimesteps(10, [999, 500])).ParamName);
        Assert.Equal("numInferenceSteps", Assert.Throws<ArgumentException>(() => s.SetTimesteps(null)).ParamName);
        using var x = torch.zeros(1, 1, 1, 1);
        Assert.Throws<InvalidOperationException>(() => s.Step(x, 999, x));
    }
}
