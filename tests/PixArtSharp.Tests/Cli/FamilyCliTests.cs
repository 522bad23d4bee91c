using System.Globalization;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Cli;

/// <summary>
/// The family cases through <c>pixart generate</c> as a user types them: PixArt-Σ (its class from model_index.json,
/// 300 tokens, 2K bins), one-step DMD (<c>--timesteps 400 --guidance 1</c>) and LoRA (<c>--lora PATH[:SCALE]</c>, PEFT
/// and kohya). The PNG pixels equal diffusers' images for the seed, ±1 at rounding edges.
/// </summary>
public sealed class FamilyCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    public static IEnumerable<object[]> Cases() =>
    [
        ["sigma_dpm_cfg", "tiny-pixart-sigma", new[] { "A small cactus with a happy face in the Sahara desert.", "--steps", "14", "-H", "64", "-W", "96", "--no-resolution-binning", "--seed", "11" }],
        ["sigma_binning", "tiny-pixart-sigma", new[] { "A mountain lake at sunrise", "--steps", "8", "-H", "120", "-W", "200", "--seed", "13" }],
        ["sigma2k_small", "tiny-pixart-sigma-2k", new[] { "A red bicycle leaning on a brick wall", "--steps", "6", "-H", "64", "-W", "48", "--no-resolution-binning", "--seed", "14" }],
        ["dmd_one_step", "tiny-pixart-dmd", new[] { "{prompt}", "--timesteps", "400", "--guidance", "1", "-H", "64", "-W", "64", "--no-resolution-binning", "--seed", "{seed}" }],
        ["lora_peft_scale1", "tiny-pixart-sigma", new[] { "{prompt}", "--lora", "{lora}/peft", "--steps", "{steps}", "-H", "{h}", "-W", "{w}", "--no-resolution-binning", "--seed", "{seed}" }],
        ["lora_scale_half", "tiny-pixart-sigma", new[] { "{prompt}", "--lora", "{lora}/kohya.safetensors:0.5", "--steps", "{steps}", "-H", "{h}", "-W", "{w}", "--no-resolution-binning", "--seed", "{seed}" }],
    ];

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesDiffusers(string name, string model, string[] template)
    {
        using var r = new Reference("expected/family/" + name);
        var call = r.Json.GetProperty("call");
        string gen = call.GetProperty("generator").GetString()!;
        int at = gen.IndexOf("manual_seed(", StringComparison.Ordinal) + 12;
        string seed = gen[at..gen.IndexOf(')', at)];
        var args = template.Select(t => t
            .Replace("{prompt}", call.GetProperty("prompt").GetString())
            .Replace("{seed}", seed)
            .Replace("{lora}", Fixtures.Path("tiny-pixart-sigma-lora"))
            .Replace("{steps}", call.TryGetProperty("num_inference_steps", out var st) ? st.GetInt32().ToString(CultureInfo.InvariantCulture) : "")
            .Replace("{h}", call.GetProperty("height").GetInt32().ToString(CultureInfo.InvariantCulture))
            .Replace("{w}", call.GetProperty("width").GetInt32().ToString(CultureInfo.InvariantCulture))).ToList();
        if (call.TryGetProperty("guidance_scale", out var g) && !args.Contains("--guidance")) args.AddRange(["--guidance", g.GetDouble().ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        if (call.TryGetProperty("negative_prompt", out var n) && n.GetString() is { Length: > 0 } neg) args.AddRange(["--negative-prompt", neg]);
        string png = _tmp.Path(name + ".png");
        var result = CliRunner.Run(["generate", .. args, "--model", Fixtures.Path(model), "-o", png]);
        output.WriteLine($"pixart generate {string.Join(' ', args)}\n{result}");
        Assert.Equal(0, result.ExitCode);

        int width = call.GetProperty("width").GetInt32(), height = call.GetProperty("height").GetInt32();
        var expected = CliRunner.ExpectedRgb8("expected/family/" + name)[0];
        var (max, differing) = CliRunner.ComparePixels(png, expected, width, height);
        output.WriteLine($"{name}: max pixel |Δ| {max}, {differing} of {expected.Length} values differ");
        Assert.True(max <= 1, $"{name}: max pixel difference {max} > 1");
        Assert.True(differing <= expected.Length / 100, $"{name}: {differing} values differ");

        var parameters = PngReader.ReadTextChunks(png)[0].Text;
        if (name.StartsWith("lora", StringComparison.Ordinal)) Assert.Matches(@"LoRA: \S+ \([0-9a-f]{12}\) × (1|0\.5)", parameters);
        if (name == "dmd_one_step") Assert.Contains("Steps: 1, Timesteps: 400, Sampler: DDPM", parameters);
    }

    [Fact]
    public void TaesdAsTheVaeMatchesDiffusers()
    {
        using var r = new Reference("taesd/lcm_taesd");
        var call = r.Json.GetProperty("call");
        string gen = call.GetProperty("generator").GetString()!;
        int at = gen.IndexOf("manual_seed(", StringComparison.Ordinal) + 12;
        int h = call.GetProperty("height").GetInt32(), w = call.GetProperty("width").GetInt32();
        string png = _tmp.Path("taesd.png");
        var result = CliRunner.Run(["generate", call.GetProperty("prompt").GetString()!, "--vae", Fixtures.Path("taesd", "tiny-taesd"),
            "--steps", call.GetProperty("num_inference_steps").GetInt32().ToString(CultureInfo.InvariantCulture), "--guidance", "0", "-H", h.ToString(CultureInfo.InvariantCulture), "-W", w.ToString(CultureInfo.InvariantCulture),
            "--no-resolution-binning", "--seed", gen[at..gen.IndexOf(')', at)], "--model", Fixtures.Path("tiny-pixart-lcm"), "-o", png]);
        output.WriteLine(result.ToString());
        Assert.Equal(0, result.ExitCode);
        var expected = CliRunner.ExpectedRgb8("taesd/lcm_taesd")[0];
        var (max, differing) = CliRunner.ComparePixels(png, expected, w, h);
        output.WriteLine($"lcm_taesd via --vae: max pixel |Δ| {max}, {differing} differ");
        Assert.True(max <= 1 && differing <= expected.Length / 100, $"max {max}, {differing} differ");
        Assert.Contains("VAE: tiny-taesd", PngReader.ReadTextChunks(png)[0].Text);
    }

    [Fact]
    public void TheDefaultDtypeIsAutoAndRecordedAsWhatItResolvedTo()
    {
        // auto: bf16 on a CPU with AVX-512-BF16 or AMX (this machine), else fp32; the PNG records the resolved name.
        string png = _tmp.Path("auto.png");
        var r = CliRunner.Run(["generate", "a cat", "--dtype", "auto", "--steps", "1", "-H", "64", "-W", "64", "--no-resolution-binning", "--seed", "1", "--model", Fixtures.Path("tiny-pixart-lcm"), "-o", png]);
        output.WriteLine(r.ToString());
        Assert.Equal(0, r.ExitCode);
        string expected = PixArtSharp.DTypeChoice.Name(PixArtSharp.DTypeChoice.Auto(TorchSharp.torch.CPU));
        Assert.Contains($"guidance 0, {expected}", r.Stderr);
        using var json = System.Text.Json.JsonDocument.Parse(PngReader.ReadTextChunks(png)[1].Text);
        Assert.Equal(expected, json.RootElement.GetProperty("dtype").GetString());
    }

    [Fact]
    public void CudaWithoutCudaIsExit2NamingBothWaysToGetIt()
    {
        var r = CliRunner.Run(["generate", "a cat", "--device", "cuda", "--model", Fixtures.Path("tiny-pixart-lcm"), "-o", _tmp.Path("c.png")]);
        output.WriteLine(r.ToString());
        Assert.Equal(PixArtSharp.Cli.ExitCodes.BadArguments, r.ExitCode);
        Assert.Contains("TorchBackend=cuda", r.Stderr);
        Assert.Contains("PIXART_LIBTORCH", r.Stderr);
    }

    [Fact]
    public void ABadAdapterIsOneClearErrorBeforeAnyModelWork()
    {
        string bogus = _tmp.WriteText("bogus.safetensors", "not a safetensors file");
        var r = CliRunner.Run(["generate", "a cat", "--lora", bogus, "--model", Fixtures.Path("tiny-pixart-sigma"), "-o", _tmp.Path("x.png")]);
        output.WriteLine(r.ToString());
        Assert.Equal(PixArtSharp.Cli.ExitCodes.BadWeights, r.ExitCode);
        Assert.Contains("bogus.safetensors", r.Stderr);
        Assert.DoesNotContain("encode", r.Stderr);
        Assert.False(File.Exists(_tmp.Path("x.png")));
    }
}
