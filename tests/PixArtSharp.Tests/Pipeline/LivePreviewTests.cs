using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Pipeline;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// Live previews: the step's predicted clean latents (StepInfo.Denoised) against the schedulers' own x0 in the fixtures,
/// TAESD frames from them, and the final image unchanged by them.
/// </summary>
public sealed class LivePreviewTests(TinyPipelines pipes, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    private static string TinyTaesd => Fixtures.Path("taesd", "tiny-taesd");

    /// <summary>
    /// expected/scheduler_steps (LCM, teacher-forced): LCM's denoised = c_skip·x + c_out·x0, with x0 its own
    /// (x − √(1−ᾱ)·ε)/√ᾱ. Rebuilding denoised from PredictedClean.Estimate with the fixture's c_skip/c_out checks x̂₀.
    /// </summary>
    [Theory]
    [InlineData("lcm_1steps")]
    [InlineData("lcm_4steps")]
    [InlineData("lcm_8steps")]
    public void PredictedCleanRebuildsLcmDenoised(string name)
    {
        using var fx = new SchedulerFixtures();
        using var s = SchedulerFixtures.Lcm();
        var seq = fx.Sequence(name);
        var steps = seq.GetProperty("steps").EnumerateArray().ToArray();
        double worst = 0;
        for (int i = 0; i < steps.Length; i++)
        {
            using var scope = NewDisposeScope();
            long t = steps[i].GetProperty("timestep").GetInt64();
            var sample = fx[i == 0 ? $"{name}.sample.0" : $"{name}.prev_sample.{i - 1}"];
            var x0 = PredictedClean.Estimate(s, t, sample, fx[$"{name}.model_output.{i}"])!;
            var denoised = sample.mul(steps[i].GetProperty("c_skip").GetDouble()).add(x0.mul(steps[i].GetProperty("c_out").GetDouble()));
            worst = Math.Max(worst, Compare.CloseRelative(fx[$"{name}.denoised.{i}"], denoised, 1e-5, $"{name}.denoised.{i}"));
        }
        output.WriteLine($"{name}: denoised from x̂₀ max|Δ| {worst:E3}");
    }

    /// <summary>expected/sa_solver/scheduler_steps: SA-Solver's data prediction x0_pred.i from the sample the model saw.</summary>
    [Theory]
    [InlineData("sa_4steps")]
    [InlineData("sa_25steps")]
    public void PredictedCleanEqualsSaSolverX0(string name)
    {
        var json = JsonDocument.Parse(Regex.Replace(File.ReadAllText(Fixtures.Path("expected", "sa_solver", "schedulers.json")),
            @"([:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])", "$1\"$2\"")).RootElement;
        var steps = json.GetProperty("sequences").EnumerateArray().Single(x => x.GetProperty("name").GetString() == name).GetProperty("steps").EnumerateArray().ToArray();
        using var r = new Reference("expected/sa_solver/scheduler_steps");
        using (r[$"{name}.sample.0"]) { }
        using var s = SASolverScheduler.FromConfigFile(Fixtures.Path("tiny-pixart", "scheduler", "scheduler_config.json"));
        double worst = 0;
        for (int i = 0; i < steps.Length; i++)
        {
            using var scope = NewDisposeScope();
            long t = steps[i].GetProperty("timestep").GetInt64();
            var sample = i == 0 ? r[$"{name}.sample.0"] : r[$"{name}.prev_sample.{i - 1}"];
            var x0 = PredictedClean.Estimate(s, t, sample, r[$"{name}.model_output.{i}"])!;
            worst = Math.Max(worst, Compare.CloseRelative(r[$"{name}.x0_pred.{i}"], x0, 1e-5, $"{name}.x0_pred.{i}"));
        }
        output.WriteLine($"{name}: x̂₀ vs x0_pred max|Δ| {worst:E3}");
    }

    private static GenerationRequest Request(int steps, double guidance = 0) => new()
    {
        Prompts = ["A small cactus with a happy face in the Sahara desert."],
        NumInferenceSteps = steps,
        GuidanceScale = guidance,
        Height = 64,
        Width = 96,
        UseResolutionBinning = false,
        Seed = 0,
    };

    /// <summary>
    /// The same request with and without previews gives the same bytes; every step has a frame of the image's size;
    /// LCM's last x̂₀ is the final latents (its last step returns denoised, and c_skip ≈ 4e-8 there).
    /// </summary>
    [Fact]
    public void PreviewsNeverChangeTheImage()
    {
        using var decoder = PreviewDecoder.Load(TinyTaesd);
        foreach (var (pipe, steps, guidance) in new[] { (pipes.Lcm, 4, 0.0), (pipes.Dpm, 5, 4.5) })
        {
            byte[] plain;
            using (var a = pipe.Generate(Request(steps, guidance))) plain = a.ToRgb8()[0];
            var frames = new List<byte[]>();
            Tensor? lastDenoised = null;
            using var b = pipe.Generate(Request(steps, guidance), info =>
            {
                Assert.NotNull(info.Denoised);
                Assert.Equal(info.Latents.shape, info.Denoised!.shape);
                frames.Add(decoder.Encode(info.Denoised));
                lastDenoised?.Dispose();
                lastDenoised = info.Denoised.clone().DetachFromDisposeScope();
                return true;
            });
            Assert.Equal(plain, b.ToRgb8()[0]);
            Assert.Equal(steps, frames.Count);
            foreach (var f in frames)
            {
                var img = ImageReader.Decode(f, "preview");   // a real JPEG of the image's size
                Assert.Equal((96, 64), (img.Width, img.Height));
            }
            if (pipe == pipes.Lcm)
            {
                double err = Compare.CloseRelative(b.Latents, lastDenoised!, 1e-5, "LCM last x̂₀ vs final latents");
                output.WriteLine($"LCM: last x̂₀ vs final latents max|Δ| {err:E3}");
            }
            lastDenoised?.Dispose();
            output.WriteLine($"{pipe.Scheduler.ClassName}: {steps} frames of {string.Join("/", frames.Select(f => f.Length))} bytes; PNG bytes unchanged");
        }
    }

    /// <summary>
    /// The real TAESD architecture (random weights, taesd/real-config.json) on a 1024px image's 128×128 latents: the
    /// frame is averaged down to the asked size, and the decode time is measured (fp32 and bf16; frame sides 512, 384, 256
    /// and bf16's full 1024). The README states these against a 1024px bf16 step (26 s).
    /// </summary>
    [Fact]
    public void RealSizeFramesAreAveragedDownAndTimed()
    {
        var c = AutoencoderTinyConfig.Load(Fixtures.Path("taesd", "real-config.json"));
        using var g = new Generator(5);
        using var latents = randn([1, 4, 128, 128], generator: g);
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float32 })
        {
            using var w = Weights.Random(3, dtype, std: 0.05);
            using var decoder = new PreviewDecoder(new AutoencoderTiny(c, w), "random");
            foreach (int side in dtype == ScalarType.BFloat16 ? new[] { 512, 384, 256, 1024 } : [512, 384, 256])   // fp32 1024: 8–12 s, in the README
            {
                decoder.Encode(latents, side);  // warm-up (oneDNN picks its kernels)
                var clock = Stopwatch.StartNew();
                var jpeg = decoder.Encode(latents, side);
                double s = clock.Elapsed.TotalSeconds;
                var img = ImageReader.Decode(jpeg, "frame");
                Assert.Equal((side, side), (img.Width, img.Height));
                output.WriteLine($"real TAESD {dtype}, 128×128 latents → {side}px frame: {s:F3} s ({s / 26 * 100:F1} % of a 26 s bf16 step), {jpeg.Length} bytes");
            }
        }
        using var tiny = PreviewDecoder.Load(TinyTaesd);
        tiny.Encode(latents);
        var tc = Stopwatch.StartNew();
        tiny.Encode(latents);
        output.WriteLine($"tiny-taesd fixture, 128×128 latents → 512px frame: {tc.Elapsed.TotalSeconds:F3} s");
    }

    /// <summary>PixArt-Σ (SDXL-VAE latents) takes madebyollin/taesdxl; previews leave its image unchanged too.</summary>
    [Fact]
    public void SigmaUsesTaesdxlAndKeepsItsImage()
    {
        using var sigma = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-sigma"));
        Assert.Equal(PreviewDecoder.SigmaRepo, PreviewDecoder.RepoFor(sigma));
        Assert.Equal(PreviewDecoder.AlphaRepo, PreviewDecoder.RepoFor(pipes.Lcm));
        using var decoder = PreviewDecoder.Load(TinyTaesd);
        var request = Request(3, 4.5);
        byte[] plain;
        using (var a = sigma.Generate(request)) plain = a.ToRgb8()[0];
        int frames = 0;
        using var b = sigma.Generate(request, info => { Assert.True(decoder.Encode(info.Denoised!).Length > 100); frames++; return true; });
        Assert.Equal(plain, b.ToRgb8()[0]);
        Assert.Equal(3, frames);
    }

    [Fact]
    public void BadLatentsAreRefusedClearly()
    {
        using var decoder = PreviewDecoder.Load(TinyTaesd);
        using var wrong = zeros(1, 8, 8, 8);
        var e = Assert.Throws<ArgumentException>(() => decoder.Encode(wrong));
        Assert.Contains("(B, 4, h, w)", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Encode(zeros(1, 4, 8, 8), maxSide: 4));
    }
}
