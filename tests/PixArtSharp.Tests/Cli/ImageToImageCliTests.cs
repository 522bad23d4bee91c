using System.Security.Cryptography;
using System.Text.Json;
using PixArtSharp.Cli;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Cli;

/// <summary>
/// <c>pixart generate --image … --strength …</c> end to end on the tiny models with the fixture input images: the PNG
/// equals the img2img fixture's images rounded as (x*255).round(), the metadata records the source's sha256 and the
/// strength, --from-png reproduces the pixels when the source is given again, and bad images exit with code 2.
/// </summary>
public sealed class ImageToImageCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Input(string name) => Fixtures.Path("expected", "img2img", "inputs", name);

    private CliResult Run(params string[] args)
    {
        var r = CliRunner.Run(args);
        output.WriteLine($"pixart {string.Join(' ', args)}\n{r}");
        return r;
    }

    private static byte[] ExpectedRgb8(string fixture)
    {
        using var r = new Reference("expected/img2img/" + fixture);
        using var images = r["images"];
        using var bytes = images.mul(255).round().clamp(0, 255).to(ScalarType.Byte);
        using var first = bytes[0].contiguous();
        return first.data<byte>().ToArray();
    }

    private void AssertParity(string png, string fixture, int width, int height)
    {
        var (max, differing) = CliRunner.ComparePixels(png, ExpectedRgb8(fixture), width, height);
        output.WriteLine($"{fixture}: max pixel |Δ| {max}, {differing} values differ");
        Assert.True(max <= 1, $"{fixture}: max pixel difference {max} > 1");
        Assert.True(differing <= width * height * 3 / 100, $"{fixture}: {differing} values differ");
    }

    private static string Sha256(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public void LcmImageToImageMatchesTheFixtureAndFromPngReproducesIt()
    {
        string png = _tmp.Path("lighthouse.png");
        string source = Input("gradient_disc_64x96.png");
        var r = Run("generate", "A watercolor painting of a lighthouse", "--image", source, "--strength", "0.5", "--steps", "4",
            "--guidance", "0", "--seed", "31", "--model", CliRunner.TinyLcm, "-o", png);
        Assert.Equal(0, r.ExitCode);
        AssertParity(png, "i2i_lcm_s05", 96, 64);
        Assert.Contains("image-to-image from gradient_disc_64x96.png (96x64) at strength 0.5: 4 steps run", r.Stderr);

        // The recipe: strength and the source's sha256, in both metadata chunks.
        var chunks = PngReader.ReadTextChunks(png);
        Assert.Contains($"Denoising strength: 0.5, Source image sha256: {Sha256(source)}", chunks[0].Text);
        var s = GenerationSettings.FromJson(chunks[1].Text);
        Assert.Equal((0.5, Sha256(source), 96, 64, false), (s.Strength, s.ImageSha256, s.Width, s.Height, s.ResolutionBinning));

        // --from-png with the same source: the same pixels.
        string again = _tmp.Path("again.png");
        Assert.Equal(0, Run("generate", "--from-png", png, "--image", source, "-o", again, "--model", CliRunner.TinyLcm).ExitCode);
        Assert.Equal(PngReader.DecodeRgb8(png).Rgb, PngReader.DecodeRgb8(again).Rgb);

        // Without it: a clear error naming the recorded source.
        var missing = Run("generate", "--from-png", png, "-o", _tmp.Path("x.png"));
        Assert.Equal(ExitCodes.BadArguments, missing.ExitCode);
        Assert.Contains($"was made from a source image (sha256 {Sha256(source)})", missing.Stderr);
        Assert.Contains("--image", missing.Stderr);

        // Another source: runs (at the recorded size), with a warning.
        var other = Run("generate", "--from-png", png, "--image", Input("gradient_disc_80x64.png"), "-o", _tmp.Path("other.png"), "--model", CliRunner.TinyLcm);
        Assert.Equal(0, other.ExitCode);
        Assert.Contains("is not the source recorded", other.Stderr);
        Assert.Equal((96, 64), (PngReader.DecodeRgb8(_tmp.Path("other.png")).Width, PngReader.DecodeRgb8(_tmp.Path("other.png")).Height));
    }

    [Fact]
    public void DpmImageToImageRunsIntOfStepsTimesStrength()
    {
        string png = _tmp.Path("astronaut.png");
        var r = Run("generate", "An astronaut riding a green horse", "--negative-prompt", "", "--image", Input("gradient_disc_64x96.png"),
            "--strength", "0.6", "--steps", "14", "--guidance", "4.5", "--seed", "33", "--model", CliRunner.TinyDpm, "-o", png, "--json");
        Assert.Equal(0, r.ExitCode);
        AssertParity(png, "i2i_dpm_s06", 96, 64);
        Assert.Contains("8 steps run", r.Stderr);
        Assert.Contains("step 8/8", r.Stderr);
        using var json = JsonDocument.Parse(r.Stdout);
        Assert.Equal(0.6, json.RootElement.GetProperty("strength").GetDouble());
        Assert.Equal(Sha256(Input("gradient_disc_64x96.png")), json.RootElement.GetProperty("image_sha256").GetString());
    }

    [Fact]
    public void ResizeToFitAndItsReproduction()
    {
        // 100x70: not multiples of 16.
        var px = new byte[100 * 70 * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)(i * 7 % 251);
        string odd = _tmp.Path("odd.png");
        PngWriter.Write(odd, px, 100, 70);

        var refused = Run("generate", "a cat", "--image", odd, "--model", CliRunner.TinyLcm, "-o", _tmp.Path("x.png"));
        Assert.Equal(ExitCodes.BadArguments, refused.ExitCode);
        Assert.Contains("multiples of 16", refused.Stderr);
        Assert.Contains("--resize-to-fit", refused.Stderr);

        string png = _tmp.Path("cat.png");
        var r = Run("generate", "a cat", "--image", odd, "--resize-to-fit", "--seed", "5", "--model", CliRunner.TinyLcm, "-o", png);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("(100x70 resized to 96x64) at strength 0.8", r.Stderr);
        var first = PngReader.DecodeRgb8(png);
        Assert.Equal((96, 64), (first.Width, first.Height));

        // The record keeps the fitted size: the same source reproduces the same pixels.
        string again = _tmp.Path("again.png");
        Assert.Equal(0, Run("generate", "--from-png", png, "--image", odd, "-o", again, "--model", CliRunner.TinyLcm).ExitCode);
        Assert.Equal(first.Rgb, PngReader.DecodeRgb8(again).Rgb);
    }

    [Fact]
    public void BadImagesAndArgumentsExitWith2()
    {
        string text = _tmp.WriteText("notes.png", "just some text\n");
        var bytes = File.ReadAllBytes(Input("gradient_disc_64x96.png"));
        string truncated = _tmp.Write("truncated.png", bytes[..(bytes.Length / 2)]);
        string good = Input("gradient_disc_64x96.png");
        (string[] Args, string Message)[] cases =
        [
            (["generate", "a cat", "--image", text], "not a PNG, JPEG or WebP image"),
            (["generate", "a cat", "--image", truncated], "corrupt or truncated"),
            (["generate", "a cat", "--image", _tmp.Path("missing.png")], "file not found"),
            (["generate", "a cat", "--strength", "0.5"], "--strength only applies to image-to-image"),
            (["generate", "a cat", "--resize-to-fit"], "--resize-to-fit only applies to image-to-image"),
            (["generate", "a cat", "--image", good, "--strength", "1.5"], "strength must be in (0, 1]"),
            (["generate", "a cat", "--image", good, "--width", "64"], "--width/--height cannot be given"),
            (["generate", "a cat", "--image", good, "--steps", "10", "--strength", "0.05", "--scheduler", "dpm-solver", "--model", CliRunner.TinyDpm], "nothing would run"),
        ];
        foreach (var (args, message) in cases)
        {
            var r = Run([.. args, "-o", _tmp.Path("out.png")]);
            Assert.True(r.ExitCode == ExitCodes.BadArguments, r.ToString());
            Assert.StartsWith("error: ", r.Stderr);
            Assert.Contains(message, r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
        }
        Assert.False(File.Exists(_tmp.Path("out.png")));
    }

    [Fact]
    public void SASolverFromTheCommandLineMatchesTheDemoFixture()
    {
        string png = _tmp.Path("cactus.png");
        var r = Run("generate", "A small cactus with a happy face in the Sahara desert.", "--negative-prompt", "", "--scheduler", "sa-solver",
            "--steps", "25", "--guidance", "3", "-H", "64", "-W", "64", "--no-resolution-binning", "--seed", "21", "--model", CliRunner.TinyDpm, "-o", png);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("25 steps of sa-solver, guidance 3", r.Stderr);
        using var reference = new Reference("expected/sa_solver/pipeline/sa_demo_25");
        using var images = reference["images"];
        using var bytes = images.mul(255).round().clamp(0, 255).to(ScalarType.Byte);
        using var first = bytes[0].contiguous();
        var (max, differing) = CliRunner.ComparePixels(png, first.data<byte>().ToArray(), 64, 64);
        output.WriteLine($"sa_demo_25: max pixel |Δ| {max}, {differing} values differ");
        Assert.True(max <= 1 && differing <= 64 * 64 * 3 / 100);
        Assert.Contains("Sampler: SA-Solver", PngReader.ReadTextChunks(png)[0].Text);
    }

    [Fact]
    public void HelpListsTheImageFlags()
    {
        var r = Run("generate", "--help");
        foreach (var flag in new[] { "--image", "--strength", "--resize-to-fit" })
            Assert.Contains(flag, r.Stdout);
    }
}
