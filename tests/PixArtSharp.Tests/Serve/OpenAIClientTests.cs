using System.ClientModel;
using System.ClientModel.Primitives;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Images;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Cli;
using PixArtSharp.Tests.Library;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

#pragma warning disable MEAI001 // IImageGenerator is experimental in Microsoft.Extensions.AI
#pragma warning disable OPENAI001 // some image options are marked experimental in the OpenAI client

namespace PixArtSharp.Tests.Serve;

/// <summary>
/// <c>pixart serve</c> on a loopback port, driven as OpenAI clients drive it: the official <c>OpenAI</c> .NET client
/// (<c>ImageClient</c>) and Microsoft.Extensions.AI's adapter over it (<c>AsIImageGenerator()</c>). Generations and
/// edits in each output format; PNG answers are the bytes <c>pixart generate</c> writes for the same settings (the seed
/// the server picked, read from the answer), JPEG and WebP decode to those pixels within their loss.
/// </summary>
[Collection("Serve")]
public sealed class OpenAIClientTests(ServeFixture fx, ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static ImageClient Client(TestApp app, string key = "unused") =>
        new("dall-e-3", new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(app.BaseUrl + "/v1"), NetworkTimeout = TimeSpan.FromMinutes(2) });

    /// <summary>What pixart generate writes for these flags on the served model.</summary>
    private byte[] Cli(params string[] args)
    {
        string png = _tmp.Path($"cli-{Guid.NewGuid():N}.png");
        var r = CliRunner.Run(["generate", .. args, "--model", fx.Folder, "-o", png, "--quiet"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        return File.ReadAllBytes(png);
    }

    private static long SeedOf(ClientResult result) =>
        JsonDocument.Parse(result.GetRawResponse().Content.ToString()).RootElement.GetProperty("data")[0].GetProperty("seed").GetInt64();

    private long SeedOfPng(byte[] png)
    {
        var chunks = PngReader.ReadTextChunks(_tmp.Write($"seed-{Guid.NewGuid():N}.png", png));
        var settings = JsonDocument.Parse(chunks.Single(c => c.Keyword == ImageFiles.SettingsKey).Text).RootElement;
        return settings.GetProperty("seed").GetInt64();
    }

    private static string Input(string name) => Fixtures.Path("expected", "img2img", "inputs", name);

    /// <summary>
    /// The tiny model's images are noise, JPEG's worst case: measured mean |Δ| 3.1 (max 20) at quality 95 and under 2 at
    /// 100 (libvips keeps full colour resolution from 90 up); lossless WebP (100) is exact.
    /// </summary>
    private void AssertWithinLoss(byte[] png, byte[] lossy, string what, double maxMean = 4)
    {
        var (meanAbs, max) = PixArtImageGeneratorTests.Difference(png, lossy);
        output.WriteLine($"{what} vs pixart generate's PNG: mean |Δ| {meanAbs:F3}, max |Δ| {max}");
        Assert.True(meanAbs < maxMean, $"{what}: mean |Δ| {meanAbs}");
    }

    [Fact]
    public async Task TheOpenAIClientGeneratesInEachFormat()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);
        var client = Client(app);
        const string prompt = "A small cactus with a happy face in the Sahara desert.";

        // PNG (the default): the bytes pixart generate writes for the seed the server chose.
        var png = await client.GenerateImageAsync(prompt, new OpenAI.Images.ImageGenerationOptions
        {
            Size = new GeneratedImageSize(64, 64),
            ResponseFormat = GeneratedImageFormat.Bytes,
            Quality = GeneratedImageQuality.High,
            ModerationLevel = GeneratedImageModerationLevel.Low,
            EndUserId = "test-user",
        });
        long seed = SeedOf(png);
        Assert.Equal(Cli(prompt, "--seed", seed.ToString(CultureInfo.InvariantCulture), "-W", "64", "-H", "64"), png.Value.ImageBytes.ToArray());

        // JPEG and WebP: the same pixels within their loss (the server's seed, so the CLI run can match it).
        foreach (var (format, quality) in new[] { (GeneratedImageFileFormat.Jpeg, 95), (GeneratedImageFileFormat.Webp, 100) })
        {
            var r = await client.GenerateImageAsync(prompt, new OpenAI.Images.ImageGenerationOptions
            {
                Size = new GeneratedImageSize(64, 64),
                OutputFileFormat = format,
                OutputCompressionFactor = quality,
            });
            var raw = JsonDocument.Parse(r.GetRawResponse().Content.ToString()).RootElement;
            Assert.Equal(format.ToString(), raw.GetProperty("output_format").GetString());
            AssertWithinLoss(Cli(prompt, "--seed", SeedOf(r).ToString(CultureInfo.InvariantCulture), "-W", "64", "-H", "64"), r.Value.ImageBytes.ToArray(), $"{format} at {quality}",
                maxMean: quality == 100 ? 1e-9 : 4);
        }
    }

    [Fact]
    public async Task TheOpenAIClientEditsAnImage()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);
        var client = Client(app);
        string source = Input("gradient_disc_64x96.png");
        const string prompt = "A watercolor painting of a lighthouse";
        using (var stream = File.OpenRead(source))
        {
            var r = await client.GenerateImageEditAsync(stream, "source.png", prompt, new ImageEditOptions { ResponseFormat = GeneratedImageFormat.Bytes });
            Assert.Equal(Cli(prompt, "--image", source, "--seed", SeedOf(r).ToString(CultureInfo.InvariantCulture)), r.Value.ImageBytes.ToArray());
        }
        using (var stream = File.OpenRead(source))
        {
            var r = await client.GenerateImageEditAsync(stream, "source.png", prompt, new ImageEditOptions { OutputFileFormat = GeneratedImageFileFormat.Jpeg });
            AssertWithinLoss(Cli(prompt, "--image", source, "--seed", SeedOf(r).ToString(CultureInfo.InvariantCulture)), r.Value.ImageBytes.ToArray(), "edit as JPEG at the default 100", maxMean: 2);
        }
    }

    [Fact]
    public async Task MicrosoftExtensionsAIsAdapterGeneratesAndEdits()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);
        using IImageGenerator generator = Client(app).AsIImageGenerator();
        const string prompt = "a red fox in the snow";

        var generated = await generator.GenerateImagesAsync(prompt, new Microsoft.Extensions.AI.ImageGenerationOptions
        {
            ImageSize = new System.Drawing.Size(64, 64),
            MediaType = "image/png",
            ResponseFormat = ImageGenerationResponseFormat.Data,
        });
        var png = Assert.IsType<DataContent>(Assert.Single(generated.Contents));
        Assert.Equal("image/png", png.MediaType);
        byte[] bytes = png.Data.ToArray();
        Assert.Equal(Cli(prompt, "--seed", SeedOfPng(bytes).ToString(CultureInfo.InvariantCulture), "-W", "64", "-H", "64"), bytes);

        var webp = Assert.IsType<DataContent>(Assert.Single((await generator.GenerateImagesAsync(prompt, new Microsoft.Extensions.AI.ImageGenerationOptions
        {
            ImageSize = new System.Drawing.Size(64, 64),
            MediaType = "image/webp",
            ResponseFormat = ImageGenerationResponseFormat.Data,
        })).Contents));
        Assert.Equal("image/webp", webp.MediaType);
        Assert.Equal((64, 64), (ImageReader.Decode(webp.Data.ToArray()).Width, ImageReader.Decode(webp.Data.ToArray()).Height));

        string source = Input("gradient_disc_64x96.png");
        var edited = await generator.EditImageAsync(new DataContent(File.ReadAllBytes(source), "image/png") { Name = "source.png" }, "A watercolor painting of a lighthouse",
            new Microsoft.Extensions.AI.ImageGenerationOptions { ResponseFormat = ImageGenerationResponseFormat.Data });
        byte[] edit = Assert.IsType<DataContent>(Assert.Single(edited.Contents)).Data.ToArray();
        Assert.Equal(Cli("A watercolor painting of a lighthouse", "--image", source, "--seed", SeedOfPng(edit).ToString(CultureInfo.InvariantCulture)), edit);
    }

    [Theory]
    [InlineData("output_format", "gif")]
    [InlineData("output_compression", 101)]
    [InlineData("quality", "ultra")]
    [InlineData("moderation", "none")]
    [InlineData("background", "transparent")] // a field no OpenAI client sends unasked: still refused
    public async Task TheJsonRouteChecksTheOpenAIFields(string field, object value)
    {
        await using var app = await TestApp.StartAsync(fx);
        var body = Api.Small("a cat", 1);
        body[field] = value;
        var r = await Api.Post(app.Client, body);
        var json = await Api.ReadJson(r);
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Equal(field, json.GetProperty("error").GetProperty("param").GetString());
        output.WriteLine(json.GetProperty("error").GetProperty("message").GetString());
    }

    [Fact]
    public async Task EditsRefuseCrossSiteFormsMissingTokensAndBadFields()
    {
        await using var app = await TestApp.StartAsync(fx, new PixArtSharp.Cli.Serve.ServeOptions { Token = "s3cret-token" }, kestrel: true);
        byte[] image = File.ReadAllBytes(Input("gradient_disc_64x96.png"));
        MultipartFormDataContent Form(params (string Key, string Value)[] fields)
        {
            var form = new MultipartFormDataContent();
            var file = new ByteArrayContent(image);
            file.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            form.Add(file, "image", "source.png");
            foreach (var (k, v) in fields) form.Add(new StringContent(v), k);
            return form;
        }
        async Task<(HttpStatusCode, JsonElement)> Post(MultipartFormDataContent form, string? token = "s3cret-token", string? origin = null, string? fetchSite = null)
        {
            using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/images/edits") { Content = form };
            if (token is not null) req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            if (origin is not null) req.Headers.Add("Origin", origin);
            if (fetchSite is not null) req.Headers.Add("Sec-Fetch-Site", fetchSite);
            var r = await app.Client.SendAsync(req);
            return (r.StatusCode, await Api.ReadJson(r));
        }
        var (status, body) = await Post(Form(("prompt", "a cat")), token: null);
        Assert.Equal(HttpStatusCode.Unauthorized, status);
        (status, body) = await Post(Form(("prompt", "a cat")), origin: "https://evil.example");
        Assert.Equal(HttpStatusCode.Forbidden, status);
        Assert.Equal("cross_site", body.GetProperty("error").GetProperty("code").GetString());
        (status, _) = await Post(Form(("prompt", "a cat")), fetchSite: "cross-site");
        Assert.Equal(HttpStatusCode.Forbidden, status);
        (status, body) = await Post(Form(("prompt", "a cat"), ("background", "transparent")));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("background", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await Post(Form(("prompt", "a cat"), ("size", "64x64")));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("size", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await Post(Form(("prompt", "a cat"), ("steps", "many")));
        Assert.Equal("steps", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await Post(Form(("prompt", "a cat"), ("output_format", "gif")));
        Assert.Equal("output_format", body.GetProperty("error").GetProperty("param").GetString());
        var noImage = new MultipartFormDataContent { { new StringContent("a cat"), "prompt" } };
        (status, body) = await Post(noImage);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("image", body.GetProperty("error").GetProperty("param").GetString());
        // JSON to the edits route: 415 (a JSON edit goes to /v1/images/generations with "image").
        using var json = new HttpRequestMessage(HttpMethod.Post, "/v1/images/edits") { Content = Api.Json(new { prompt = "a cat" }) };
        json.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "s3cret-token");
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, (await app.Client.SendAsync(json)).StatusCode);
        // Same-origin (the server's own page) with the token, and our own fields: accepted.
        (status, body) = await Post(Form(("prompt", "a cat"), ("seed", "4"), ("steps", "2"), ("strength", "0.5"), ("size", "96x64"), ("quality", "auto")), origin: app.BaseUrl);
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.Equal(4, body.GetProperty("data")[0].GetProperty("seed").GetInt64());
        Assert.Equal("png", body.GetProperty("output_format").GetString());

        // The OpenAPI document describes the route and the OpenAI fields.
        var openapi = await Api.ReadJson(await app.Client.GetAsync("/openapi.json"));
        var edits = openapi.GetProperty("paths").GetProperty("/v1/images/edits").GetProperty("post").GetProperty("requestBody").GetProperty("content")
            .GetProperty("multipart/form-data").GetProperty("schema").GetProperty("properties");
        Assert.True(edits.TryGetProperty("image", out _));
        var fields = openapi.GetProperty("components").GetProperty("schemas").GetProperty("ImagesRequest").GetProperty("properties");
        foreach (var f in new[] { "output_format", "output_compression", "quality", "moderation" }) Assert.True(fields.TryGetProperty(f, out _), f);
    }
}
