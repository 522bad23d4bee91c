using System.Text.Json;
using PixArtSharp.Bench;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using PixArtSharp.Text;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Bench;

public sealed class BenchTests(ITestOutputHelper output)
{
    private static T Load<T>(string rel) => ConfigJson.Parse<T>(RealConfigs.ReadText(rel), rel);

    [Fact]
    public void FlopCountsOfTheRealConfigsMatchTheHandDerivedFigures()
    {
        var t5 = Load<T5Config>("text_encoder/config.json");
        var tr = Load<PixArtTransformerConfig>("transformer/config.json");
        var vae = Load<AutoencoderKLConfig>("vae/config.json");
        double step = FlopCount.TransformerForward(tr, 128, 128);
        double enc = FlopCount.T5Encoder(t5, 120);
        double dec = FlopCount.VaeDecode(vae, 128, 128);
        output.WriteLine($"transformer 1024px {step / 1e12:0.000} TFLOP, T5 120 tokens {enc / 1e12:0.000} TFLOP, VAE decode 1024px {dec / 1e12:0.000} TFLOP");
        // The figures: ≈ 6.5, ≈ 1.1 and ≈ 10.6 TFLOP.
        Assert.InRange(step / 1e12, 6.3, 6.7);
        Assert.InRange(enc / 1e12, 1.05, 1.15);
        Assert.InRange(dec / 1e12, 10.2, 11.0);
        // Hand count of one block at N = 4096, D = 1152, L = 120: 28ND² + 4N²D + 4LD² + 4NLD.
        double n = 4096, d = 1152, l = 120;
        double block = 28 * n * d * d + 4 * n * n * d + 4 * l * d * d + 4 * n * l * d;
        Assert.InRange(step / (28 * block), 1.0, 1.01);
        // Batch and size scale as they should: linear in batch; attention makes 2× tokens cost more than 2×.
        Assert.Equal(2 * step, FlopCount.TransformerForward(tr, 128, 128, batch: 2), 1e-6 * step);
        Assert.True(FlopCount.TransformerForward(tr, 128, 256) > 2 * step);
        Assert.Equal(4 * FlopCount.VaeDecode(vae, 64, 64), dec, 0.05 * dec);
    }

    [Fact]
    public void EmbeddedRealConfigsAreTheFixtureFiles()
    {
        var files = RealConfigs.Files;
        Assert.Contains("text_encoder/model.safetensors.index.json", files);
        foreach (var rel in files)
            Assert.Equal(File.ReadAllText(Fixtures.Path("real-configs", RealConfigs.Name, rel)), RealConfigs.ReadText(rel));
    }

    [Fact]
    public void BenchOnTheTinyFolderReportsEveryStageAndTheFp32Distance()
    {
        var r = BenchRunner.Run(new BenchOptions
        {
            ModelDir = Fixtures.Path("tiny-pixart-lcm"),
            Height = 256,
            Width = 256,
            DType = ScalarType.BFloat16,
            CompareFp32 = true,
        });
        output.WriteLine(r.ToTable());
        using var doc = JsonDocument.Parse(r.ToJson());
        foreach (var key in new[] { "size", "dtype", "batch", "steps", "load_seconds", "t5_seconds", "step_seconds_median", "vae_seconds",
                                    "e2e_seconds", "peak_rss_bytes", "gemm_gflops", "achieved_gflops" })
            Assert.True(doc.RootElement.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null, key);
        Assert.Equal("256x256", r.Size);
        Assert.Equal("bf16", r.Dtype);
        Assert.Equal(4, r.StepSeconds!.Length);
        Assert.True(r.PeakRssBytes > 0);
        // bf16 vs fp32 on the tiny model, pixels in [0, 1]: measured max 0.0156, mean 0.0017.
        Assert.InRange(r.Fp32ImageMaxAbsDiff!.Value, 0, 0.05);
        Assert.InRange(r.Fp32ImageMeanAbsDiff!.Value, 0, 0.005);
        Assert.Equal(r.ToJson(), BenchResult.FromJson(r.ToJson()).ToJson());
        // T5 ran on the prompt's tokens (the folder's tokenizer), not the padding to 120; its FLOPs are counted so.
        var tokens = T5Tokenizer.FromModelFolder(Fixtures.Path("tiny-pixart-lcm", "tokenizer"))
            .Encode([CaptionCleaner.Preprocess(new BenchOptions().Prompt, true)], 120).AttentionMask.Sum();
        Assert.Equal((int)tokens, r.T5Tokens);
        Assert.InRange(r.T5Tokens!.Value, 2, 119);
    }

    [Fact]
    public void PromptTokensOutsideOneTo120AreRefusedBeforeAnyWork()
    {
        foreach (int n in new[] { 0, 121 })
        {
            var e = Assert.Throws<ArgumentException>(() => BenchRunner.Run(new BenchOptions { Component = BenchComponent.T5, PromptTokens = n }));
            Assert.Contains($"prompt tokens must be 1 to 120, not {n}", e.Message);
        }
    }

    [Fact]
    public void RepeatTimesSteadyRunsWithEveryModelLoaded()
    {
        var r = BenchRunner.Run(new BenchOptions
        {
            ModelDir = Fixtures.Path("tiny-pixart-lcm"),
            Height = 64,
            Width = 64,
            Batch = 2,
            DType = ScalarType.Float32,
            Repeat = 3,
        });
        output.WriteLine(r.ToTable());
        Assert.Equal(3, r.SteadySeconds!.Length);
        Assert.Equal(r.SteadySeconds.Order().ElementAt(1), r.SteadySecondsMedian);
        Assert.Equal(2 / r.SteadySecondsMedian!.Value, r.ImagesPerSecond!.Value, 1e-9);
        // The stages of a run are parts of it.
        Assert.True(r.SteadyT5Seconds > 0 && r.SteadyDenoiseSeconds > 0 && r.SteadyVaeSeconds > 0);
        Assert.True(r.SteadyT5Seconds + r.SteadyDenoiseSeconds + r.SteadyVaeSeconds <= r.SteadySecondsMedian);
        // On the CPU there is no GPU memory to sample and no cuDNN.
        Assert.Null(r.GpuPeakBytes);
        Assert.Null(r.CudnnBenchmark);
        Assert.Equal("none", r.Offload);

        var vae = BenchRunner.Run(new BenchOptions { ModelDir = Fixtures.Path("tiny-pixart-lcm"), Height = 64, Width = 64, Component = BenchComponent.Vae, DType = ScalarType.Float32, Repeat = 2 });
        Assert.Equal(2, vae.SteadySeconds!.Length);
        Assert.Equal(vae.SteadySecondsMedian, vae.SteadyVaeSeconds);

        var e = Assert.Throws<ArgumentException>(() => BenchRunner.Run(new BenchOptions { Component = BenchComponent.T5, Repeat = 2 }));
        Assert.Contains("--repeat needs component all", e.Message);
    }

    [Fact]
    public void TheBenchCommandPrintsOneJsonObjectAndUsesPixartsExitCodes()
    {
        var r = PixArtSharp.Tests.Cli.CliRunner.Run("bench", "--model", Fixtures.Path("tiny-pixart-lcm"), "--size", "64x96", "--steps", "2", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout); // stdout holds the JSON object alone; progress went to stderr
        Assert.Equal("64x96", doc.RootElement.GetProperty("size").GetString());
        Assert.Equal(2, doc.RootElement.GetProperty("steps").GetInt32());
        Assert.Equal(2, doc.RootElement.GetProperty("step_seconds").GetArrayLength());
        Assert.Contains("step 2/2", r.Stderr);

        var badSize = PixArtSharp.Tests.Cli.CliRunner.Run("bench", "--size", "12x");
        Assert.Equal(2, badSize.ExitCode);
        Assert.Equal("error: --size must be N or HEIGHTxWIDTH in pixels (e.g. 1024 or 768x1344), not '12x'.", badSize.Stderr.Trim());
        Assert.Equal(2, PixArtSharp.Tests.Cli.CliRunner.Run("bench", "--component", "unet").ExitCode);
        var missing = PixArtSharp.Tests.Cli.CliRunner.Run("bench", "--model", "/nonexistent/pixart-model", "--json");
        Assert.True(missing.ExitCode == 3, missing.ToString());
        Assert.Empty(missing.Stdout);
    }

    [Fact]
    public void TinyVaeAndAQuantizedT5RunThroughTheUsersCodePath()
    {
        // --tiny-vae: TAESD (random weights, real config) decodes; --t5-quant q8_0: the folder's T5 config written as a
        // GGUF file of random Q8_0 weights and loaded by T5EncoderModel.FromGguf, as a user's file is.
        var r = PixArtSharp.Tests.Cli.CliRunner.Run("bench", "--model", Fixtures.Path("tiny-pixart-lcm"), "--size", "64", "--steps", "1",
            "--tiny-vae", "--t5-quant", "q8_0", "--dtype", "bf16", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout);
        Assert.Equal("AutoencoderTiny", doc.RootElement.GetProperty("vae").GetString());
        Assert.Equal("Q8_0", doc.RootElement.GetProperty("t5_gguf").GetString());
        Assert.True(doc.RootElement.GetProperty("t5_gguf_bytes").GetInt64() > 0);
        Assert.True(doc.RootElement.GetProperty("vae_seconds").GetDouble() > 0);
        Assert.True(doc.RootElement.GetProperty("t5_seconds").GetDouble() > 0);
    }
}
