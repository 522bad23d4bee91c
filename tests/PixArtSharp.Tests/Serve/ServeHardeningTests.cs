using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.TestHost;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>
/// Issue 15 in the server (in memory): NaN output is an error answer, control characters in a prompt never fail
/// after the work, answers carry no local path, and the small things (415, duplicate keys, BOM, parser noise,
/// Cache-Control, -0). Each assertion fails on the code before the fix (said per test).
/// </summary>
[Collection("Serve")]
public sealed class ServeHardeningTests(ServeFixture fx, ITestOutputHelper output)
{
    private static async Task<(Microsoft.AspNetCore.Builder.WebApplication App, GenerationQueue Queue, HttpClient Client)> Start(PixArtPipeline pipe, ModelInfo model)
    {
        var options = new ServeOptions { Host = "127.0.0.1", Port = 0 };
        var queue = new GenerationQueue(pipe, model, options.MaxQueue, options.MaxBatch, options.KeepFinished);
        var app = ServerApp.Build(options, queue, b => b.WebHost.UseTestServer());
        await app.StartAsync();
        return (app, queue, app.GetTestClient());
    }

    private static StringContent Raw(string json, string type = "application/json") => new(json, Encoding.UTF8, type);

    // Before: an all-black image and 200.
    [Fact]
    public async Task NanOutputIsA500NamingTheStageAndTheServerStaysUp()
    {
        using var tmp = new PixArtSharp.Tests.Loading.TempDir();
        string folder = PixArtSharp.Tests.Cli.HardeningCliTests.NanModel(tmp.Path("nan-model"));
        using var pipe = PixArtAlphaPipeline.FromPretrained(folder);
        var (app, queue, client) = await Start(pipe, ServeSafety.ServedModel(new ModelInfo(folder, null, null, "fp32"), Path.Combine(folder, "transformer")));
        try
        {
            var r = await Api.Post(client, Api.Small("a cat", 1));
            string text = await r.Content.ReadAsStringAsync();
            output.WriteLine($"{(int)r.StatusCode} {text}");
            Assert.Equal(HttpStatusCode.InternalServerError, r.StatusCode);
            var e = JsonDocument.Parse(text).RootElement.GetProperty("error");
            Assert.Equal("non_finite_output", e.GetProperty("code").GetString());
            Assert.Contains("the final latents hold NaN or infinite values", e.GetProperty("message").GetString());
            Assert.DoesNotContain(tmp.Root, text);
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/health")).StatusCode);
        }
        finally
        {
            queue.Dispose();
            await app.DisposeAsync();
        }
    }

    // Before: "Generation failed: <the absolute path> …" (500) — the path of this machine in a remote answer.
    [Fact]
    public async Task AWeightFileGoneAfterStartIsA503NamingTheFileWithoutItsPath()
    {
        using var tmp = new PixArtSharp.Tests.Loading.TempDir();
        string folder = PixArtSharp.Tests.Cli.CliRunner.CopyModel(PixArtSharp.Tests.Cli.CliRunner.TinyLcm, tmp.Path("tiny-pixart-lcm"));
        // Loaded per request (KeepLoaded = false), so the file is read after the server started.
        using var pipe = PixArtPipeline.FromPretrained(folder, new PipelineOptions { KeepLoaded = false });
        var (app, queue, client) = await Start(pipe, ServeSafety.ServedModel(new ModelInfo(folder, null, null, "fp32"), Path.Combine(folder, "transformer")));
        try
        {
            string weights = Path.Combine(folder, "transformer", "diffusion_pytorch_model.safetensors");
            using (var fs = new FileStream(weights, FileMode.Open, FileAccess.Write)) fs.SetLength(fs.Length / 2);
            var r = await Api.Post(client, Api.Small("a cat", 1));
            string text = await r.Content.ReadAsStringAsync();
            output.WriteLine($"{(int)r.StatusCode} {text}");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
            Assert.Equal("model_unavailable", JsonDocument.Parse(text).RootElement.GetProperty("error").GetProperty("code").GetString());
            Assert.Contains("diffusion_pytorch_model.safetensors", text);
            Assert.DoesNotContain(tmp.Root, text);
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/health")).StatusCode);
        }
        finally
        {
            queue.Dispose();
            await app.DisposeAsync();
        }
    }

    // Before: a 500 after the whole generation (the PNG text chunk refused the NUL).
    [Fact]
    public async Task APromptWithControlCharactersIsAnsweredAndEscapedInTheMetadata()
    {
        var (app, queue, client) = await Start(fx.Pipeline, fx.Model);
        try
        {
            var r = await Api.Post(client, Api.Small("a fox\u0000 in\u001b snow", 5));
            var json = await Api.ReadJson(r);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            byte[] png = Api.FirstPng(json);
            string file = Path.Combine(Path.GetTempPath(), $"pixart-nul-{Guid.NewGuid():N}.png");
            File.WriteAllBytes(file, png);
            try { Assert.StartsWith("a fox\u2400 in\u241b snow\n", PngReader.ReadTextChunks(file)[0].Text); }
            finally { File.Delete(file); }
            Assert.StartsWith("a fox\u2400 in\u241b snow\n", json.GetProperty("data")[0].GetProperty("parameters").GetString());
            Assert.Equal("no-store", r.Headers.CacheControl?.ToString());
        }
        finally
        {
            queue.Dispose();
            await app.DisposeAsync();
        }
    }

    // Before: the server recorded the model as the absolute folder it loaded (and answered it to any client).
    [Fact]
    public async Task AnswersNameTheModelAndItsWeightsHashNeverALocalPath()
    {
        var served = ServeSafety.ServedModel(fx.Model, Path.Combine(fx.Folder, "transformer"));
        Assert.Equal(ServeFixture.ModelLabel, served.Model);
        Assert.Matches("^sha256:[0-9a-f]{12}$", served.ModelRevision);
        // The hash is of the weights: the narrow fixture transformer has another.
        Assert.NotEqual(served.ModelRevision, ServeSafety.WeightsHash(Path.Combine(PixArtSharp.Tests.Cli.CliRunner.TinyLcm, "transformer")));
        var (app, queue, client) = await Start(fx.Pipeline, served);
        try
        {
            var r = await Api.Post(client, Api.Small("a red fox", 42));
            string text = await r.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            byte[] png = Convert.FromBase64String(JsonDocument.Parse(text).RootElement.GetProperty("data")[0].GetProperty("b64_json").GetString()!);
            string pngText = Encoding.Latin1.GetString(png);
            string root = Path.GetDirectoryName(fx.Folder)!;
            Assert.DoesNotContain(root, text);
            Assert.DoesNotContain(root, pngText);
            Assert.Contains($"Model: {ServeFixture.ModelLabel}, Model revision: {served.ModelRevision}", pngText);
        }
        finally
        {
            queue.Dispose();
            await app.DisposeAsync();
        }
        Assert.Equal("cannot read transformer/w.safetensors: gone", ServeSafety.ScrubPaths("cannot read /home/me/models/x/transformer/w.safetensors: gone"));
        Assert.Equal("no paths here", ServeSafety.ScrubPaths("no paths here"));
    }

    [Fact]
    public async Task SmallThingsAreConsistent()
    {
        var (app, queue, client) = await Start(fx.Pipeline, fx.Model);
        try
        {
            // 415 for another media type (with its type in the body).
            var r = await client.PostAsync("/v1/images/generations", Raw("prompt=a+cat", "application/x-www-form-urlencoded"));
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, r.StatusCode);
            Assert.Equal("invalid_request_error", (await Api.ReadJson(r)).GetProperty("error").GetProperty("type").GetString());

            // Before: the last copy of a duplicate key won silently.
            r = await client.PostAsync("/v1/images/generations", Raw("{\"prompt\": \"a cat\", \"steps\": 2, \"steps\": 3}"));
            var e = (await Api.ReadJson(r)).GetProperty("error");
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal(("steps", "duplicate_field"), (e.GetProperty("param").GetString(), e.GetProperty("code").GetString()));

            // Before: a byte-order mark made the body "not a valid JSON object". Now it is skipped: the steps check speaks.
            var bom = new ByteArrayContent([0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes("{\"prompt\": \"a cat\", \"steps\": 0}")]);
            bom.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            r = await client.PostAsync("/v1/images/generations", bom);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal("steps", (await Api.ReadJson(r)).GetProperty("error").GetProperty("param").GetString());

            // Before: the parser's quoted token ('x') came back as the parameter.
            r = await client.PostAsync("/v1/images/generations", Raw("{\"prompt\": x}"));
            e = (await Api.ReadJson(r)).GetProperty("error");
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.NotEqual("x", e.GetProperty("param").GetString());
            Assert.DoesNotContain("LineNumber", e.GetProperty("message").GetString());

            // A size the model cannot run (multiples of 16 without binning) is a 400 before any model work.
            var tiny = Api.Small("a cat", 7);
            tiny["width"] = 24;
            tiny["height"] = 24;
            r = await Api.Post(client, tiny);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal("width", (await Api.ReadJson(r)).GetProperty("error").GetProperty("param").GetString());

            // Before: "CFG scale: -0" and guidance -0.0 in the answer's settings.
            var body = Api.Small("a cat", 7);
            body["guidance"] = -0.0;
            r = await Api.Post(client, body);
            string text = await r.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Contains("CFG scale: 0,", text);
            Assert.DoesNotContain("\"guidance\":-0", text);
            Assert.Equal("no-store", r.Headers.CacheControl?.ToString());

            // Job answers carry the images too.
            string id = JsonDocument.Parse(text).RootElement.GetProperty("id").GetString()!;
            Assert.Equal("no-store", (await client.GetAsync($"/v1/jobs/{id}")).Headers.CacheControl?.ToString());
        }
        finally
        {
            queue.Dispose();
            await app.DisposeAsync();
        }
    }
}
