using System.Security.Cryptography;
using System.Text.Json;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Pipeline;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// Image-to-image (SDEdit) against expected/img2img: the three cases from the seed alone (the input PNG read by
/// ImageReader, then VAE encode sample, add_noise noise and LCM step noise all from one generator), with the
/// fixture README's tolerances; timesteps.json exactly, including the ValueError it records; and the input checks.
/// </summary>
public class ImageToImageTests(TinyPipelines fixture, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    private static string InputPath(Reference r) =>
        Fixtures.Path("expected", "img2img", r.Json.GetProperty("input_image").GetProperty("png").GetString()!);

    [Theory]
    [InlineData("i2i_lcm_s05")]
    [InlineData("i2i_lcm_s08_n2")]
    [InlineData("i2i_dpm_s06")]
    public void MatchesTheComposedPipelineFromTheSeed(string name)
    {
        using var scope = NewDisposeScope();
        using var r = new Reference("expected/img2img/" + name);
        var pipe = r.Json.GetProperty("pipeline").GetString() == "tiny-pixart-lcm" ? fixture.Lcm : fixture.Dpm;
        var call = r.Json.GetProperty("call");
        var derived = r.Json.GetProperty("derived");

        // The PNG as ImageReader decodes it, preprocessed: exactly the fixture's input.
        string png = InputPath(r);
        Assert.Equal(r.Json.GetProperty("input_image").GetProperty("sha256").GetString(), Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(png))));
        var rgb = ImageReader.Read(png);
        var image = ImageToImage.Preprocess(rgb);
        Assert.Equal(0.0, Compare.MaxAbsDiff(r["image_preprocessed"], image));

        var request = PipelineFixtureTests.RequestFromCall(call) with { Image = image, Strength = call.GetProperty("strength").GetDouble() };
        var expectedTimesteps = derived.GetProperty("timesteps").EnumerateArray().Select(x => x.GetInt64()).ToList();
        var seen = new List<long>();
        double worstStep = 0;
        using var result = pipe.Generate(request, info =>
        {
            seen.Add(info.Timestep);
            string key = $"step.{info.Step - 1}.latents_out";
            worstStep = Math.Max(worstStep, Compare.CloseRelative(r[key], info.Latents, 5e-6, $"{name} {key}") / Compare.MaxAbs(r[key]));
            return true;
        });

        Assert.Equal(expectedTimesteps, seen);
        Assert.Equal(derived.GetProperty("steps_run").GetInt32(), seen.Count);
        double latentErr = Compare.CloseRelative(r["final_latents"], result.Latents, 5e-6, name + " final_latents");
        double imageErr = Compare.Close(r["images"], result.Images!, 1e-4, name + " images");
        var hw = derived.GetProperty("output_height_width");
        Assert.Equal(hw[0].GetInt32(), result.Height);
        Assert.Equal(hw[1].GetInt32(), result.Width);
        output.WriteLine($"{name}: final_latents max|Δ| {latentErr:E3} (max|ref| {Compare.MaxAbs(r["final_latents"]):F2}), images max|Δ| {imageErr:E3}, " +
                         $"worst step |Δ|/max|ref| {worstStep:E2}");
    }

    /// <summary>The encode moments and add_noise, given the stored draws (atol 1e-5 per the README).</summary>
    [Theory]
    [InlineData("i2i_lcm_s05")]
    [InlineData("i2i_lcm_s08_n2")]
    [InlineData("i2i_dpm_s06")]
    public void EncodeAndAddNoiseMatchGivenTheStoredDraws(string name)
    {
        using var scope = NewDisposeScope();
        using var r = new Reference("expected/img2img/" + name);
        var pipe = r.Json.GetProperty("pipeline").GetString() == "tiny-pixart-lcm" ? fixture.Lcm : fixture.Dpm;
        var call = r.Json.GetProperty("call");
        using var dist = ((AutoencoderKL)pipe.LoadVae()).Encode(r["image_preprocessed"]);
        double meanErr = Compare.Close(r["encode.mean"], dist.mean, 1e-5, name + " encode.mean");
        double stdErr = Compare.Close(r["encode.std"], dist.std, 1e-5, name + " encode.std");

        var init = (r["encode.mean"] + r["encode.std"] * r["encode.sample_noise"]).mul(pipe.VaeScalingFactor);
        long total = r["init_latents"].shape[0];
        init = init.expand(total, -1, -1, -1).contiguous();
        Assert.Equal(0.0, Compare.MaxAbsDiff(r["init_latents"], init), 6);

        using var scheduler = pipe.CreateScheduler(null);
        var schedule = ImageToImage.SetTimesteps(scheduler, call.GetProperty("num_inference_steps").GetInt32(), null, call.GetProperty("strength").GetDouble());
        var noisy = scheduler.AddNoise(r["init_latents"], r["add_noise.noise"], full([total], schedule.Timesteps[0], ScalarType.Int64));
        double addErr = Compare.Close(r["initial_latents"], noisy, 1e-5, name + " initial_latents");
        output.WriteLine($"{name}: encode.mean {meanErr:E2}, encode.std {stdErr:E2}, initial_latents {addErr:E2}");
    }

    [Fact]
    public void TimestepsTableMatchesExactly()
    {
        var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("expected", "img2img", "timesteps.json"))).RootElement;
        int checkedCases = 0, errors = 0;
        foreach (var (key, folder) in new[] { ("lcm", "tiny-pixart-lcm"), ("dpm", "tiny-pixart") })
        {
            var model = ModelFolder.Open(Fixtures.Path(folder));
            foreach (var c in json.GetProperty(key).EnumerateArray())
            {
                int n = c.GetProperty("num_inference_steps").GetInt32();
                double s = c.GetProperty("strength").GetDouble();
                using var scheduler = SchedulerFactory.Create(model);
                if (c.TryGetProperty("error", out var err))
                {
                    Assert.Equal("ValueError", err.GetString());
                    var e = Assert.Throws<ArgumentException>(() => ImageToImage.SetTimesteps(scheduler, n, null, s));
                    Assert.StartsWith(c.GetProperty("message").GetString()!, e.Message);
                    errors++;
                }
                else
                {
                    var schedule = ImageToImage.SetTimesteps(scheduler, n, null, s);
                    var expected = c.GetProperty("timesteps").EnumerateArray().Select(x => x.GetInt64()).ToArray();
                    Assert.True(expected.SequenceEqual(schedule.Timesteps), $"{key} n={n} s={s}: [{string.Join(",", schedule.Timesteps)}] != [{string.Join(",", expected)}]");
                    Assert.Equal(c.GetProperty("steps_run").GetInt32(), schedule.Timesteps.Length);
                    if (c.TryGetProperty("t_start", out var ts)) Assert.Equal(ts.GetInt32(), schedule.TStart);
                    if (c.TryGetProperty("begin_index", out var bi)) Assert.Equal(bi.GetInt32(), ((DPMSolverMultistepScheduler)scheduler).BeginIndex);
                }
                checkedCases++;
            }
        }
        Assert.Equal(1, errors);
        output.WriteLine($"{checkedCases} (scheduler, steps, strength) combinations, {errors} error(s) reproduced");
    }

    [Fact]
    public void DpmStrengthTooSmallForAnyStepIsAnArgumentException()
    {
        using var scheduler = fixture.Dpm.CreateScheduler(null);
        var e = Assert.Throws<ArgumentException>(() => ImageToImage.SetTimesteps(scheduler, 10, null, 0.05));
        Assert.Equal("strength", e.ParamName);
    }

    [Fact]
    public void SASolverRunsTheEndOfItsScheduleFromTheBeginIndex()
    {
        using var scope = NewDisposeScope();
        var image = ImageToImage.Preprocess(ImageReader.Read(Fixtures.Path("expected", "img2img", "inputs", "gradient_disc_64x96.png")));
        var seen = new List<long>();
        var request = new GenerationRequest { Prompts = ["a lighthouse"], Scheduler = "sa-solver", NumInferenceSteps = 10, Strength = 0.5, Image = image, Seed = 5 };
        using var result = fixture.Dpm.Generate(request, info => { seen.Add(info.Timestep); return true; });
        Assert.Equal(new long[] { 500, 400, 300, 200, 100 }, seen);
        Assert.Equal([1, 64, 96, 3], result.Images!.shape);
        Assert.False(result.Images.isnan().any().item<bool>());
        // Deterministic from the seed.
        using var again = fixture.Dpm.Generate(request);
        Assert.Equal(0.0, Compare.MaxAbsDiff(result.Images, again.Images!));
    }

    /// <summary>
    /// One image and one generator per prompt (a server batching independent requests): each prompt's images equal
    /// what that request gives alone with its own seed and image.
    /// </summary>
    [Fact]
    public void BatchedRequestsWithOwnImagesAndGeneratorsEqualSeparateRuns()
    {
        using var scope = NewDisposeScope();
        var a = ImageToImage.Preprocess(ImageReader.Read(Fixtures.Path("expected", "img2img", "inputs", "gradient_disc_64x96.png")));
        var b = a.flip(3).contiguous(); // a second, different image of the same size
        var batched = new GenerationRequest
        {
            Prompts = ["a lighthouse", "a red barn"],
            Image = cat([a, b], 0),
            Strength = 0.6,
            NumImagesPerPrompt = 2,
            Generators = [new Generator(11), new Generator(12)],
        };
        using var together = fixture.Lcm.Generate(batched);
        using var first = fixture.Lcm.Generate(new GenerationRequest { Prompts = ["a lighthouse"], Image = a, Strength = 0.6, NumImagesPerPrompt = 2, Seed = 11 });
        using var second = fixture.Lcm.Generate(new GenerationRequest { Prompts = ["a red barn"], Image = b, Strength = 0.6, NumImagesPerPrompt = 2, Seed = 12 });
        // Batched convolutions may round differently from single ones: compare within the fixtures' image tolerance.
        double e1 = Compare.Close(first.Images!, together.Images![0..2], 1e-4, "prompt 0 rows");
        double e2 = Compare.Close(second.Images!, together.Images![2..4], 1e-4, "prompt 1 rows");
        Assert.True(Compare.MaxAbsDiff(first.Images!, second.Images!) > 0.01);
        output.WriteLine($"batched vs separate: {e1:E2}, {e2:E2}");
    }

    [Theory]
    [InlineData(96, 64, 1_000_000, 96, 64)]          // already fits
    [InlineData(100, 70, 1_000_000, 96, 64)]         // rounded down to multiples of 16
    [InlineData(4032, 3024, 1024 * 1024, 1168, 880)] // a phone photo scaled to about 1 MP, aspect kept
    [InlineData(10, 5000, 1024 * 1024, 16, 4992)]    // never below one multiple
    public void FitSizeScalesDownAndRoundsToMultiplesOf16(int w, int h, long maxPixels, int ew, int eh)
    {
        Assert.Equal((ew, eh), ImageToImage.FitSize(w, h, maxPixels));
    }

    [Fact]
    public void OutputSizeKeepsAFittingImageAndExplainsTheOthers()
    {
        Assert.Equal((96, 64), ImageToImage.OutputSize(96, 64, resizeToFit: false, maxPixels: 0, maxSide: 2048, "--resize-to-fit"));
        Assert.Equal((96, 64), ImageToImage.OutputSize(100, 70, resizeToFit: true, maxPixels: 1_000_000, maxSide: 2048, "--resize-to-fit"));
        Assert.Equal((1168, 880), ImageToImage.OutputSize(4032, 3024, resizeToFit: true, maxPixels: 1024 * 1024, maxSide: 2048, "--resize-to-fit"));

        var odd = Assert.Throws<ArgumentException>(() => ImageToImage.OutputSize(100, 70, false, 0, 2048, "--resize-to-fit"));
        Assert.Equal("The image is 100x70; image-to-image needs both sides to be multiples of 16. Use --resize-to-fit to scale it to the model's size, or crop it (e.g. to 96x64).", odd.Message);
        var big = Assert.Throws<ArgumentException>(() => ImageToImage.OutputSize(4096, 1024, false, 0, 2048, "\"resize_to_fit\": true"));
        Assert.Equal("The image is 4096x1024; the limit is 2048 pixels per side. Use \"resize_to_fit\": true to scale it to the model's size.", big.Message);
        // 8000×100 already has less than 1 MP: scaling keeps it 8000 wide, over the side limit.
        var thin = Assert.Throws<ArgumentException>(() => ImageToImage.OutputSize(8000, 100, true, 1024 * 1024, 2048, "--resize-to-fit"));
        Assert.Contains("8000x96, over the limit of 2048", thin.Message);
    }

    [Fact]
    public void ResizeGivesExactlyTheSizeAskedFor()
    {
        var src = ImageReader.Read(Fixtures.Path("expected", "img2img", "inputs", "gradient_disc_64x96.png"));
        Assert.Same(src, ImageToImage.Resize(src, 96, 64));
        var r = ImageToImage.Resize(src, 80, 48);
        Assert.Equal((80, 48), (r.Width, r.Height));
        var again = ImageToImage.Resize(src, 80, 48);
        Assert.Equal(r.Pixels, again.Pixels);
        var flat = new RgbImage(50, 30, Enumerable.Repeat((byte)77, 50 * 30 * 3).ToArray());
        Assert.All(ImageToImage.Resize(flat, 48, 32).Pixels, b => Assert.Equal(77, b));
    }

    [Fact]
    public void InvalidImageRequestsAreArgumentExceptions()
    {
        using var scope = NewDisposeScope();
        var ok = zeros(1, 3, 64, 96);
        var basic = new GenerationRequest { Prompts = ["x"], Image = ok, Strength = 0.5, Seed = 1 };
        void Throws(GenerationRequest req, string param, string fragment)
        {
            var e = Assert.Throws<ArgumentException>(() => fixture.Lcm.Generate(req));
            Assert.Equal(param, e.ParamName);
            Assert.Contains(fragment, e.Message);
        }
        Throws(basic with { Image = zeros(1, 3, 64, 88) }, "Image", "multiples of 16");
        Throws(basic with { Image = zeros(1, 3, 72, 96) }, "Image", "multiples of 16");
        Throws(basic with { Image = zeros(3, 64, 96) }, "Image", "(N, 3, H, W)");
        Throws(basic with { Image = zeros(new long[] { 1, 3, 64, 96 }, ScalarType.Byte) }, "Image", "float");
        Throws(basic with { Image = zeros(2, 3, 64, 96), Prompts = ["a", "b", "c"] }, "Image", "one per prompt");
        Throws(basic with { Strength = 0 }, "strength", "(0.0, 1.0]");
        Throws(basic with { Strength = 1.5 }, "strength", "(0.0, 1.0]");
        Throws(basic with { Height = 128 }, "Height", "image's size");
        Throws(basic with { Latents = zeros(1, 4, 8, 12) }, "Latents", "not both");
        Throws(basic with { Image = null }, "Strength", "image-to-image");
        // LCM: 8 steps at strength 0.1 leave 5 origin steps (diffusers' ValueError).
        Throws(basic with { NumInferenceSteps = 8, Strength = 0.1 }, "numInferenceSteps", "smaller than `num_inference_steps`: 8");
    }
}
