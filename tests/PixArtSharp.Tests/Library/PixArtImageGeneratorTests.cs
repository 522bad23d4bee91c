using System.Drawing;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Cli;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

#pragma warning disable MEAI001 // IImageGenerator is experimental in Microsoft.Extensions.AI

namespace PixArtSharp.Tests.Library;

/// <summary>
/// <see cref="PixArtImageGenerator"/> on the tiny PixArt-LCM fixture: its PNGs are byte for byte the files
/// <c>pixart generate</c> writes for the same settings (text-to-image, several images, edits), JPEG/WebP decode to the
/// same pixels within their loss, and bad arguments are refused naming the parameter.
/// </summary>
public sealed class PixArtImageGeneratorTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static string Input(string name) => Fixtures.Path("expected", "img2img", "inputs", name);

    private static ImageGenerationOptions Small(long seed, int steps = 2, int count = 1, string? mediaType = null) => new()
    {
        ImageSize = new Size(64, 64),
        Count = count,
        MediaType = mediaType,
        AdditionalProperties = new AdditionalPropertiesDictionary { ["seed"] = seed, ["steps"] = steps, ["resolution_binning"] = false },
    };

    private string[] Cli(string name, params string[] args)
    {
        string png = _tmp.Path(name);
        var r = CliRunner.Run(["generate", .. args, "--model", CliRunner.TinyLcm, "-o", png, "--quiet"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
    }

    private static byte[] Bytes(AIContent c) => Assert.IsType<DataContent>(c).Data.ToArray();

    [Fact]
    public async Task PngsAreTheBytesPixartGenerateWrites()
    {
        using var gen = new PixArtImageGenerator(CliRunner.TinyLcm);
        // One image.
        var one = await gen.GenerateImagesAsync("A small cactus with a happy face in the Sahara desert.", Small(7));
        var cli = Cli("one.png", "A small cactus with a happy face in the Sahara desert.", "--seed", "7", "--steps", "2", "-W", "64", "-H", "64", "--no-resolution-binning");
        var image = Assert.Single(one.Contents);
        Assert.Equal("image/png", Assert.IsType<DataContent>(image).MediaType);
        Assert.Equal(File.ReadAllBytes(cli[0]), Bytes(image));
        Assert.Equal(7L, image.AdditionalProperties!["seed"]);

        // Count: two images of one prompt, in order (pixart generate --num-images 2).
        var two = await gen.GenerateImagesAsync("a red fox", Small(11, count: 2));
        var files = Cli("two.png", "a red fox", "--seed", "11", "--steps", "2", "-W", "64", "-H", "64", "--no-resolution-binning", "--num-images", "2");
        Assert.Equal(2, two.Contents.Count);
        Assert.Equal(File.ReadAllBytes(files[0]), Bytes(two.Contents[0]));
        Assert.Equal(File.ReadAllBytes(files[1]), Bytes(two.Contents[1]));
        Assert.NotEqual(Bytes(two.Contents[0]), Bytes(two.Contents[1]));

        // Negative prompt, guidance, style and scheduler through AdditionalProperties (DPM-Solver with CFG).
        var o = Small(5, steps: 3);
        o.AdditionalProperties!["guidance"] = 4.5;
        o.AdditionalProperties["negative_prompt"] = "blurry";
        o.AdditionalProperties["style"] = "Anime";
        o.AdditionalProperties["scheduler"] = "dpm-solver";
        var styled = await gen.GenerateImagesAsync("a castle", o);
        var sf = Cli("styled.png", "a castle", "--seed", "5", "--steps", "3", "-W", "64", "-H", "64", "--no-resolution-binning",
            "--guidance", "4.5", "--negative-prompt", "blurry", "--style", "Anime", "--scheduler", "dpm-solver");
        Assert.Equal(File.ReadAllBytes(sf[0]), Bytes(Assert.Single(styled.Contents)));
    }

    [Fact]
    public async Task AnEditIsImageToImageWithTheBytesPixartGenerateWrites()
    {
        using var gen = new PixArtImageGenerator(CliRunner.TinyLcm);
        string source = Input("gradient_disc_64x96.png");
        var o = new ImageGenerationOptions { AdditionalProperties = new() { ["seed"] = 31, ["steps"] = 4, ["strength"] = 0.5, ["guidance"] = 0 } };
        var edited = await gen.EditImageAsync(new DataContent(File.ReadAllBytes(source), "image/png"), "A watercolor painting of a lighthouse", o);
        var cli = Cli("edit.png", "A watercolor painting of a lighthouse", "--image", source, "--strength", "0.5", "--steps", "4", "--guidance", "0", "--seed", "31");
        byte[] png = Bytes(Assert.Single(edited.Contents));
        Assert.Equal(File.ReadAllBytes(cli[0]), png);
        var (w, h, _) = PngReader.DecodeRgb8(_tmp.Write("e.png", png));
        Assert.Equal((96, 64), (w, h)); // the source's size
        var settings = Assert.IsType<GenerationSettings>(edited.RawRepresentation);
        Assert.Equal(0.5, settings.Strength);
        Assert.NotNull(settings.ImageSha256);
    }

    [Theory]
    [InlineData("image/jpeg", new byte[] { 0xFF, 0xD8, 0xFF })]
    [InlineData("image/webp", new byte[] { (byte)'R', (byte)'I', (byte)'F', (byte)'F' })]
    public async Task JpegAndWebpDecodeToThePngsPixelsWithinTheirLoss(string mediaType, byte[] magic)
    {
        using var gen = new PixArtImageGenerator(CliRunner.TinyLcm);
        var png = Bytes(Assert.Single((await gen.GenerateImagesAsync("a lighthouse at dusk", Small(3))).Contents));
        var lossy = Assert.IsType<DataContent>(Assert.Single((await gen.GenerateImagesAsync("a lighthouse at dusk", Small(3, mediaType: mediaType))).Contents));
        Assert.Equal(mediaType, lossy.MediaType);
        Assert.Equal(magic, lossy.Data.ToArray()[..magic.Length]);
        var (meanAbs, max) = Difference(png, lossy.Data.ToArray());
        output.WriteLine($"{mediaType} at quality 100 vs PNG: mean |Δ| {meanAbs:F3}, max |Δ| {max} (of 255)");
        // JPEG at 100: full colour resolution, only rounding in the DCT; WebP at 100 is lossless.
        if (mediaType == "image/webp") Assert.Equal((0.0, 0), (meanAbs, max));
        else Assert.True(meanAbs < 2, $"mean |Δ| {meanAbs}");

        // output_compression is the quality: lower is smaller and further from the PNG.
        var o = Small(3, mediaType: mediaType);
        o.AdditionalProperties!["output_compression"] = 20;
        var small = Bytes(Assert.Single((await gen.GenerateImagesAsync("a lighthouse at dusk", o)).Contents));
        Assert.True(small.Length < lossy.Data.Length, $"{small.Length} bytes at 20 vs {lossy.Data.Length} at 100");
        Assert.True(Difference(png, small).MeanAbs > meanAbs);
    }

    internal static (double MeanAbs, int Max) Difference(byte[] a, byte[] b)
    {
        var x = ImageReader.Decode(a);
        var y = ImageReader.Decode(b);
        Assert.Equal((x.Width, x.Height), (y.Width, y.Height));
        long sum = 0;
        int max = 0;
        for (int i = 0; i < x.Pixels.Length; i++)
        {
            int d = Math.Abs(x.Pixels[i] - y.Pixels[i]);
            sum += d;
            max = Math.Max(max, d);
        }
        return (sum / (double)x.Pixels.Length, max);
    }

    [Fact]
    public async Task BadArgumentsAreRefusedNamingTheParameter()
    {
        using var gen = new PixArtImageGenerator(CliRunner.TinyLcm);
        Assert.Equal("request", (await Assert.ThrowsAsync<ArgumentNullException>(() => gen.GenerateAsync(null!))).ParamName);
        Assert.Equal("request", (await Assert.ThrowsAsync<ArgumentException>(() => gen.GenerateAsync(new ImageGenerationRequest("  ")))).ParamName);

        async Task<ArgumentException> Bad(ImageGenerationOptions o, string contains)
        {
            var e = await Assert.ThrowsAnyAsync<ArgumentException>(() => gen.GenerateImagesAsync("a cat", o));
            output.WriteLine(e.Message);
            Assert.Equal("options", e.ParamName);
            Assert.Contains(contains, e.Message);
            return e;
        }
        await Bad(new ImageGenerationOptions { MediaType = "image/gif" }, "options.MediaType 'image/gif'");
        await Bad(new ImageGenerationOptions { ModelId = "dall-e-3" }, "options.ModelId 'dall-e-3'");
        await Bad(new ImageGenerationOptions { AdditionalProperties = new() { ["sampler"] = "euler" } }, "options.AdditionalProperties[\"sampler\"] is not known");
        await Bad(new ImageGenerationOptions { AdditionalProperties = new() { ["steps"] = "many" } }, "options.AdditionalProperties[\"steps\"]");
        await Bad(new ImageGenerationOptions { Count = 0 }, "options.Count");
        await Bad(new ImageGenerationOptions { ImageSize = new Size(64, 5000) }, "options.ImageSize");
        await Bad(new ImageGenerationOptions { AdditionalProperties = new() { ["style"] = "Baroque" } }, "options.AdditionalProperties[\"style\"]");
        await Bad(new ImageGenerationOptions { AdditionalProperties = new() { ["strength"] = 0.5 } }, "only applies to edits");
        await Bad(new ImageGenerationOptions { MediaType = "image/jpeg", AdditionalProperties = new() { ["output_compression"] = 101 } }, "output_compression");

        var odd = await Assert.ThrowsAsync<ArgumentException>(() =>
            gen.EditImageAsync(new DataContent(File.ReadAllBytes(Input("gradient_disc_80x64.png")), "image/png"), "a cat",
                new ImageGenerationOptions { ImageSize = new Size(72, 64) }));
        Assert.Equal("options", odd.ParamName);
        var notImage = await Assert.ThrowsAsync<ArgumentException>(() =>
            gen.GenerateAsync(new ImageGenerationRequest("a cat", [new TextContent("not an image")])));
        Assert.Equal("request", notImage.ParamName);
        Assert.Contains("request.OriginalImages[0]", notImage.Message);
        Assert.Throws<ArgumentException>("model", () => new PixArtImageGenerator(" "));
    }

    [Fact]
    public async Task DependencyInjectionGivesTheGeneratorAndGetServiceThePipeline()
    {
        var services = new ServiceCollection();
        services.AddPixArtImageGenerator(CliRunner.TinyLcm);
        await using var provider = services.BuildServiceProvider();
        var gen = provider.GetRequiredService<IImageGenerator>();
        var pixart = Assert.IsType<PixArtImageGenerator>(gen);
        Assert.Equal("pixartsharp", gen.GetService<ImageGeneratorMetadata>()!.ProviderName);
        var pipeline = gen.GetService<PixArtPipeline>();
        Assert.IsType<PixArtAlphaPipeline>(pipeline);
        Assert.Same(pipeline, await pixart.GetPipelineAsync());
        Assert.Equal(Path.GetFullPath(CliRunner.TinyLcm), pixart.Model!.Model);
        Assert.Null(gen.GetService<PixArtPipeline>(serviceKey: "other"));
    }
}
