using System.Text.Json;
using PixArtSharp.Cli;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Cli;

/// <summary>
/// <c>pixart generate</c> end to end on the tiny fixture models: the PNG pixels equal diffusers' images for the
/// seed rounded as (x*255).round() (±1 allowed at rounding edges), the recipe in the metadata, --from-png,
/// file naming, exit codes, plain output when redirected.
/// </summary>
public sealed class GenerateCommandTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static readonly string[] LcmBasic =
        ["generate", "A small cactus with a happy face in the Sahara desert.", "--steps", "4", "--guidance", "0",
         "--height", "64", "--width", "96", "--no-resolution-binning", "--seed", "0"];

    private CliResult Run(params string[] args)
    {
        var r = CliRunner.Run(args);
        output.WriteLine($"pixart {string.Join(' ', args)}\n{r}");
        return r;
    }

    private void AssertParity(string png, byte[] expected, int width, int height, string what)
    {
        var (max, differing) = CliRunner.ComparePixels(png, expected, width, height);
        output.WriteLine($"{what}: max pixel |Δ| {max}, {differing} of {expected.Length} values differ");
        Assert.True(max <= 1, $"{what}: max pixel difference {max} > 1");
        Assert.True(differing <= expected.Length / 100, $"{what}: {differing} values differ, more than rounding edges explain");
    }

    [Fact]
    public void LcmBasicMatchesDiffusersAndRecordsItsRecipe()
    {
        string png = _tmp.Path("cactus.png");
        var r = Run([.. LcmBasic, "--model", CliRunner.TinyLcm, "-o", png]);
        Assert.Equal(0, r.ExitCode);
        AssertParity(png, CliRunner.ExpectedRgb8("lcm_basic")[0], 96, 64, "lcm_basic");

        // Results on stdout; progress as plain lines on (redirected) stderr, no ANSI escapes.
        Assert.Equal($"Saved {png} (seed 0)", r.Stdout.Trim());
        Assert.False(r.Stderr.Contains('\u001b'), "ANSI escape in redirected output");
        foreach (var line in new[] { "load ", "encode ", "denoise  step 1/4", "denoise  step 4/4", "decode ", "save " })
            Assert.Contains(line, r.Stderr);
        Assert.Contains("seed 0, 96x64, 4 steps of lcm, guidance 0, fp32", r.Stderr);

        // The metadata: A1111 parameters text, then the JSON with every setting.
        var chunks = PngReader.ReadTextChunks(png);
        Assert.Equal(["parameters", "pixart-settings"], chunks.Select(c => c.Keyword));
        Assert.Equal("A small cactus with a happy face in the Sahara desert.\n" +
                     $"Steps: 4, Sampler: LCM, CFG scale: 0, Seed: 0, Size: 96x64, Model: tiny-pixart-lcm, Version: PixArtSharp {PixArtSharp.Cli.Generate.ImageMetadata.Version}",
                     chunks[0].Text);
        var s = GenerationSettings.FromJson(chunks[1].Text);
        Assert.Equal(["A small cactus with a happy face in the Sahara desert."], s.Prompts);
        Assert.Equal((4, 0.0, 0L, 96, 64, 1, "lcm", false, true), (s.Steps, s.Guidance, s.Seed, s.Width, s.Height, s.NumImages, s.Scheduler, s.ResolutionBinning, s.CleanCaption));
        using var json = JsonDocument.Parse(chunks[1].Text);
        // The model as the user named it (issue 15: never made absolute; this test names it by its full path).
        Assert.Equal(CliRunner.TinyLcm, json.RootElement.GetProperty("model").GetString());
        Assert.Equal("fp32", json.RootElement.GetProperty("dtype").GetString());
        Assert.Equal(0, json.RootElement.GetProperty("image_index").GetInt32());
        Assert.False(json.RootElement.TryGetProperty("model_revision", out _));
    }

    public static IEnumerable<object[]> MoreParityCases() =>
    [
        ["dpm_cfg", CliRunner.TinyDpm, new[] { "An astronaut riding a green horse", "--steps", "14", "--guidance", "4.5", "-H", "64", "-W", "64", "--no-resolution-binning", "--seed", "1" }],
        ["lcm_8steps_cfg", CliRunner.TinyLcm, new[] { "Portrait of an old sailor, oil painting", "--negative-prompt", "blurry", "--steps", "8", "--guidance", "1.5", "-H", "64", "-W", "64", "--no-resolution-binning", "--seed", "6" }],
        // Resolution binning on (the default): generated at the nearest trained aspect ratio, resized back to 200x120.
        ["lcm_binning", CliRunner.TinyLcm, new[] { "A mountain lake at sunrise", "--steps", "4", "--guidance", "0", "-H", "120", "-W", "200", "--seed", "5" }],
    ];

    [Theory]
    [MemberData(nameof(MoreParityCases))]
    public void MatchesDiffusersPixels(string fixture, string model, string[] args)
    {
        string png = _tmp.Path(fixture + ".png");
        var r = Run(["generate", .. args, "--model", model, "-o", png, "--quiet"]);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("", r.Stderr);                 // --quiet: nothing but the file name
        Assert.Equal(png, r.Stdout.Trim());
        var expected = CliRunner.ExpectedRgb8(fixture)[0];
        var (w, h, _) = PngReader.DecodeRgb8(png);
        AssertParity(png, expected, w, h, fixture);
        Assert.Equal(expected.Length, w * h * 3);
        if (fixture == "dpm_cfg") Assert.Contains("Sampler: DPM++ 2M, CFG scale: 4.5, Seed: 1, Size: 64x64", PngReader.ReadTextChunks(png)[0].Text);
    }

    [Fact]
    public void FromPngReproducesThePixelsAndFlagsOverrideIt()
    {
        string first = _tmp.Path("first.png");
        Assert.Equal(0, Run([.. LcmBasic, "--model", CliRunner.TinyLcm, "-o", first, "-q"]).ExitCode);

        // A model recorded as a local folder is never taken from an image (issue 15): it must be given again.
        var noModel = Run("generate", "--from-png", first, "-o", _tmp.Path("no-model.png"));
        Assert.Equal(ExitCodes.BadArguments, noModel.ExitCode);
        Assert.Contains($"was made with the local model '{CliRunner.TinyLcm}'; give it again with --model FOLDER", noModel.Stderr);

        // Everything else from the metadata. A negative prompt with guidance 0 changes nothing: a warning.
        string again = _tmp.Path("again.png");
        var r = Run("generate", "--from-png", first, "-o", again, "--negative-prompt", "blurry", "--model", CliRunner.TinyLcm);
        Assert.Equal(0, r.ExitCode);
        // The CLI says what it took from the file.
        Assert.Contains("from first.png: model (from --model), seed 0, 1 prompt(s), 4 steps, fp32", r.Stderr);
        Assert.Contains("warning: the negative prompt has no effect with guidance 0", r.Stderr);
        Assert.Equal(PngReader.DecodeRgb8(first).Rgb, PngReader.DecodeRgb8(again).Rgb);
        var s = GenerationSettings.FromJson(PngReader.ReadTextChunks(again)[1].Text);
        Assert.Equal("blurry", s.NegativePrompt);
        Assert.Contains("\nNegative prompt: blurry\n", PngReader.ReadTextChunks(again)[0].Text);

        // A flag given overrides the record.
        string twoSteps = _tmp.Path("two.png");
        Assert.Equal(0, Run("generate", "--from-png", first, "-o", twoSteps, "--steps", "2", "-q", "--model", CliRunner.TinyLcm).ExitCode);
        Assert.Equal(2, GenerationSettings.FromJson(PngReader.ReadTextChunks(twoSteps)[1].Text).Steps);
        Assert.NotEqual(PngReader.DecodeRgb8(first).Rgb, PngReader.DecodeRgb8(twoSteps).Rgb);
    }

    [Fact]
    public void SeveralImagesAreNamedPromptMajorAndEachMatchesDiffusers()
    {
        // num_images_per_prompt = 2: cat-0.png, cat-1.png are diffusers' images 0 and 1.
        string cat = _tmp.Path("cat.png");
        var r = Run("generate", "a photo of a cat", "--model", CliRunner.TinyLcm, "--num-images", "2", "--steps", "4", "--guidance", "0",
            "--height", "48", "--width", "80", "--no-resolution-binning", "--seed", "2", "-o", cat, "--json");
        Assert.Equal(0, r.ExitCode);
        var expected = CliRunner.ExpectedRgb8("lcm_num_images_2");
        string[] files = [_tmp.Path("cat-0.png"), _tmp.Path("cat-1.png")];
        for (int i = 0; i < 2; i++) AssertParity(files[i], expected[i], 80, 48, $"lcm_num_images_2[{i}]");
        Assert.False(File.Exists(cat));

        // --json: one object with the files, the seed and timings.
        using var json = JsonDocument.Parse(r.Stdout);
        Assert.Equal(files, json.RootElement.GetProperty("files").EnumerateArray().Select(f => f.GetString()));
        Assert.Equal(2, json.RootElement.GetProperty("seed").GetInt64());
        foreach (var t in new[] { "load", "encode", "denoise", "decode", "save", "total", "seconds_per_step" })
            Assert.True(json.RootElement.GetProperty("timings").GetProperty(t).GetDouble() >= 0, t);

        // --from-png of the second image reruns its batch and writes that image only.
        string second = _tmp.Path("second.png");
        Assert.Equal(0, Run("generate", "--from-png", files[1], "-o", second, "-q", "--model", CliRunner.TinyLcm).ExitCode);
        Assert.Equal(PngReader.DecodeRgb8(files[1]).Rgb, PngReader.DecodeRgb8(second).Rgb);
        Assert.False(File.Exists(_tmp.Path("second-0.png")));

        // Two prompts are one batch (a diffusers prompt list): robots-0 is prompt 0, robots-1 prompt 1.
        var batch = Run("generate", "A Tiny Robot", "A very long and detailed description of a futuristic city skyline at dusk, with flying cars and glowing neon signs",
            "--model", CliRunner.TinyDpm, "--negative-prompt", "", "--steps", "14", "--guidance", "4.5", "--height", "64", "--width", "48",
            "--no-clean-caption", "--no-resolution-binning", "--seed", "3", "-o", _tmp.Path("robots.png"), "-q");
        Assert.Equal(0, batch.ExitCode);
        var expectedBatch = CliRunner.ExpectedRgb8("dpm_batch2");
        for (int i = 0; i < 2; i++) AssertParity(_tmp.Path($"robots-{i}.png"), expectedBatch[i], 48, 64, $"dpm_batch2[{i}]");
        Assert.StartsWith("A very long", PngReader.ReadTextChunks(_tmp.Path("robots-1.png"))[0].Text);
    }

    [Fact]
    public void ArgumentErrorsExitWith2BeforeAnyModelWork()
    {
        string png = _tmp.Path("x.png");
        string[][] cases =
        [
            ["generate", "a cat", "--no-such-flag"],
            ["generate", "--model", CliRunner.TinyLcm],                                   // no prompt
            ["generate", "a cat", "--steps", "0", "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--height", "65", "--no-resolution-binning", "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--height", "24", "--width", "24", "--no-resolution-binning", "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--scheduler", "euler", "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--style", "Watercolour", "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--seed", "many"],
            ["generate", "a cat", "--from-png", _tmp.Path("missing.png")],
            ["generate", "a cat", "-o", _tmp.Path("x.jpg"), "--model", CliRunner.TinyLcm],
        ];
        foreach (var args in cases)
        {
            var r = Run(args);
            Assert.True(r.ExitCode == ExitCodes.BadArguments, r.ToString());
            Assert.StartsWith("error: ", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr); // no stack trace without --verbose
        }
        Assert.False(File.Exists(png));
    }

    [Fact]
    public void UnwritableOutputIsAClearErrorAndLeavesNothing()
    {
        // A path under a regular file cannot be created (even by root).
        string file = _tmp.WriteText("not-a-folder", "x");
        var r = Run("generate", "a cat", "--model", CliRunner.TinyLcm, "-o", Path.Combine(file, "out.png"));
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.Contains("Cannot write images to", r.Stderr);
        Assert.Equal([file], Directory.GetFileSystemEntries(_tmp.Root));
        Assert.Equal("", r.Stdout);
    }

    [Fact]
    public void MissingModelExits3AndCorruptWeightsExit4()
    {
        var missing = Run("generate", "a cat", "--model", _tmp.Path("no-such-model"), "-o", _tmp.Path("a.png"));
        Assert.Equal(ExitCodes.ModelNotFound, missing.ExitCode);
        Assert.Contains("does not exist", missing.Stderr);

        string model = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("broken"));
        string weights = Path.Combine(model, "transformer", "diffusion_pytorch_model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, bytes[..(bytes.Length / 2)]);  // truncated download
        var corrupt = Run("generate", "a cat", "--model", model, "-o", _tmp.Path("b.png"), "--steps", "1", "-H", "16", "-W", "16", "--no-resolution-binning");
        Assert.Equal(ExitCodes.BadWeights, corrupt.ExitCode);
        Assert.Contains("diffusion_pytorch_model.safetensors", corrupt.Stderr);
        Assert.DoesNotContain("   at ", corrupt.Stderr);
        var verbose = Run("generate", "a cat", "--model", model, "-o", _tmp.Path("b.png"), "--steps", "1", "-H", "16", "-W", "16", "--no-resolution-binning", "--verbose");
        Assert.Equal(ExitCodes.BadWeights, verbose.ExitCode);
        Assert.Contains("   at ", verbose.Stderr);         // the stack trace, only with --verbose
        Assert.False(File.Exists(_tmp.Path("b.png")));
        Assert.Empty(Directory.GetFiles(_tmp.Root, "*.tmp"));
    }

    [Fact]
    public void CancelledRunExits130AndLeavesNoFile()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = PixArtSharp.Cli.Program.Run(["generate", "a cat", "--model", CliRunner.TinyLcm, "-o", _tmp.Path("c.png"), "-H", "16", "-W", "16", "--no-resolution-binning"],
            stdout, stderr, cts.Token);
        Assert.Equal(ExitCodes.Interrupted, code);
        Assert.Contains("Interrupted.", stderr.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(_tmp.Root));
    }

    [Fact]
    public void VariantMissingForSomeComponentsFallsBackWithAWarning()
    {
        // Only the transformer has fp16 files (here a copy of its fp32 weights): the others load their defaults.
        string model = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("variant"));
        File.Copy(Path.Combine(model, "transformer", "diffusion_pytorch_model.safetensors"), Path.Combine(model, "transformer", "diffusion_pytorch_model.fp16.safetensors"));
        using (var pipe = PixArtAlphaPipeline.FromPretrained(model, new PipelineOptions { Variant = "fp16", KeepLoaded = false }))
        {
            Assert.Equal(2, pipe.Warnings.Count);
            Assert.Contains(pipe.Warnings, w => w.StartsWith("'text_encoder' has no 'fp16' weights", StringComparison.Ordinal));
            Assert.Contains(pipe.Warnings, w => w.StartsWith("'vae' has no 'fp16' weights", StringComparison.Ordinal));
        }
        var r = Run("generate", "a cat", "--model", model, "--variant", "fp16", "-o", _tmp.Path("v.png"), "--steps", "1", "-H", "16", "-W", "16", "--no-resolution-binning", "--json");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("warning: 'vae' has no 'fp16' weights; its default weights are loaded instead", r.Stderr);
        using var json = JsonDocument.Parse(r.Stdout);
        Assert.Equal(2, json.RootElement.GetProperty("warnings").GetArrayLength());
        Assert.Equal("fp16", JsonDocument.Parse(PngReader.ReadTextChunks(_tmp.Path("v.png"))[1].Text).RootElement.GetProperty("variant").GetString());
    }

    [Fact]
    public void PromptsFileRunsInBatchesWithSeedPlusBatchIndex()
    {
        string list = _tmp.WriteText("prompts.txt", "a red fox\n\na blue bird\r\na green frog\n");
        var r = Run("generate", "--prompts-file", list, "--batch-size", "2", "--model", CliRunner.TinyLcm, "--steps", "1",
            "-H", "16", "-W", "16", "--no-resolution-binning", "--seed", "10", "-o", _tmp.Path("animal.png"), "--json");
        Assert.Equal(0, r.ExitCode);
        using var json = JsonDocument.Parse(r.Stdout);
        var images = json.RootElement.GetProperty("images").EnumerateArray().ToList();
        Assert.Equal(["a red fox", "a blue bird", "a green frog"], images.Select(i => i.GetProperty("prompt").GetString()));
        Assert.Equal([10L, 10, 11], images.Select(i => i.GetProperty("seed").GetInt64()));
        Assert.Equal([0, 0, 1], images.Select(i => i.GetProperty("batch").GetInt32()));
        for (int i = 0; i < 3; i++)
        {
            var s = GenerationSettings.FromJson(PngReader.ReadTextChunks(_tmp.Path($"animal-{i}.png"))[1].Text);
            Assert.Equal(i < 2 ? ["a red fox", "a blue bird"] : ["a green frog"], s.Prompts);
        }
        // Both ways of giving prompts at once is a mistake.
        Assert.Equal(ExitCodes.BadArguments, Run("generate", "a cat", "--prompts-file", list).ExitCode);
    }

    [Fact]
    public void OutputFolderGetsTheDefaultNameWithTheSeed()
    {
        string folder = Directory.CreateDirectory(_tmp.Path("out")).FullName;
        var r = Run("generate", "a cat", "--model", CliRunner.TinyLcm, "--steps", "1", "-H", "16", "-W", "16", "--no-resolution-binning",
            "--seed", "77", "-o", folder, "-q");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(Path.Combine(folder, "pixart-77.png"), r.Stdout.Trim());
        Assert.True(File.Exists(Path.Combine(folder, "pixart-77.png")));
    }

    [Fact]
    public void DownloadRefusesWhatIsNotAHubId()
    {
        var r = Run("download", "not a repo id");
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.Contains("is not a Hugging Face model id", r.Stderr);
        Assert.Equal(ExitCodes.BadArguments, Run("download").ExitCode);
    }

    [Fact]
    public void HelpListsEveryFlagWithExamples()
    {
        var r = Run("generate", "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (var flag in new[] { "--prompts-file", "--batch-size", "--negative-prompt", "--model", "--revision", "--variant", "--steps", "--guidance",
                     "--seed", "--height", "--width", "--num-images", "--no-resolution-binning", "--no-clean-caption", "--scheduler", "--dtype", "--device", "--offload",
                     "--threads", "--output", "--style", "--from-png", "--quiet", "--json", "Examples:" })
            Assert.Contains(flag, r.Stdout);
        var root = Run("--help");
        Assert.Contains("generate", root.Stdout);
        Assert.Contains("download", root.Stdout);
        Assert.Contains("Exit codes", root.Stdout);
    }
}
