using System.Text.Json;
using Microsoft.AspNetCore.TestHost;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>pixart serve's live previews (progress events carry frames) and its prompt cache (/health counts).</summary>
[Collection("Serve")]
public sealed class ServePreviewTests(ServeFixture fx, ITestOutputHelper output)
{
    private static List<(string Name, JsonElement Data)> Events(string text) =>
        text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
            .Where(block => block.StartsWith("event: ", StringComparison.Ordinal))
            .Select(block => (block.Split('\n')[0]["event: ".Length..], JsonDocument.Parse(block.Split('\n')[1]["data: ".Length..]).RootElement.Clone()))
            .ToList();

    /// <summary>With previews on, running progress events carry a JPEG data: URL of the image's size; the PNG is the same.</summary>
    [Fact]
    public async Task ProgressEventsCarryPreviewFramesAndTheImageIsUnchanged()
    {
        byte[] without;
        await using (var plain = await TestApp.StartAsync(fx))
            without = Api.FirstPng(await Api.ReadJson(await Api.Post(plain.Client, Api.Small("a lantern", 9, steps: 3))));

        await using var app = await TestApp.StartAsync(fx);
        using var decoder = PreviewDecoder.Load(Fixtures.Path("taesd", "tiny-taesd"));
        app.Queue.Preview = decoder;
        PreviewFrames.TestStepDelayMs = 150;   // each step lasts long enough for the stream to send it
        try
        {
            var r = await Api.Post(app.Client, Api.Small("a lantern", 9, steps: 3), "?stream=true");
            var events = Events(await r.Content.ReadAsStringAsync());
            var frames = events.Where(e => e.Name == "progress" && e.Data.TryGetProperty("preview", out _))
                .Select(e => (Step: e.Data.GetProperty("step").GetInt32(), Url: e.Data.GetProperty("preview").GetString()!)).ToList();
            Assert.NotEmpty(frames);
            foreach (var (step, url) in frames)
            {
                Assert.StartsWith("data:image/jpeg;base64,", url);
                var img = PixArtSharp.Imaging.ImageReader.Decode(Convert.FromBase64String(url["data:image/jpeg;base64,".Length..]), "frame");
                Assert.Equal((64, 64), (img.Width, img.Height));
                Assert.InRange(step, 1, 3);
            }
            // Finished: the job has its result, no frame.
            Assert.Equal("result", events[^1].Name);
            Assert.False(events.Single(e => e.Name == "progress" && e.Data.GetProperty("status").GetString() == "succeeded").Data.TryGetProperty("preview", out _));
            Assert.Equal(without, Api.FirstPng(events[^1].Data));
            output.WriteLine($"{frames.Count} progress events with frames (steps {string.Join(",", frames.Select(f => f.Step))}, {frames.Max(f => f.Url.Length)} chars at most); PNG unchanged");
        }
        finally
        {
            PreviewFrames.TestStepDelayMs = 0;
        }
    }

    /// <summary>A server whose pipeline caches prompts: the repeat hits, /health shows it, the bytes equal the uncached server's.</summary>
    [Fact]
    public async Task PromptCacheCountsOnHealthAndKeepsTheBytes()
    {
        byte[] uncached;
        await using (var plain = await TestApp.StartAsync(fx))
            uncached = Api.FirstPng(await Api.ReadJson(await Api.Post(plain.Client, Api.Small("a lighthouse", 4))));

        using var pipeline = PixArtPipeline.FromPretrained(fx.Folder, new PipelineOptions { PromptCacheEntries = 64 });
        using var queue = new GenerationQueue(pipeline, fx.Model, 8, 4);
        var options = new ServeOptions { Host = "127.0.0.1", Port = 0 };
        await using var app = ServerApp.Build(options, queue, b => b.WebHost.UseTestServer());
        await app.StartAsync();
        using var client = app.GetTestClient();

        var health = await Api.ReadJson(await client.GetAsync("/health"));
        Assert.Equal(0, health.GetProperty("prompt_cache").GetProperty("misses").GetInt64());
        Assert.Equal(64, health.GetProperty("prompt_cache").GetProperty("capacity").GetInt32());
        byte[] first = Api.FirstPng(await Api.ReadJson(await Api.Post(client, Api.Small("a lighthouse", 4))));
        byte[] second = Api.FirstPng(await Api.ReadJson(await Api.Post(client, Api.Small("a lighthouse", 4))));
        health = await Api.ReadJson(await client.GetAsync("/health"));
        var cache = health.GetProperty("prompt_cache");
        output.WriteLine($"/health prompt_cache: {cache}");
        Assert.Equal(1, cache.GetProperty("hits").GetInt64());     // LCM, guidance 0: only the prompt is encoded
        Assert.Equal(1, cache.GetProperty("misses").GetInt64());
        Assert.Equal(1, cache.GetProperty("entries").GetInt32());
        Assert.Equal(uncached, first);
        Assert.Equal(uncached, second);
        await app.StopAsync();
    }

    [Fact]
    public void BadPreviewAndCacheOptionsAreRefused()
    {
        Assert.Contains("--preview must be tiny or none", Assert.Throws<PixArtSharp.Cli.UsageException>(() => new ServeOptions { Preview = "huge" }.Validate()).Message);
        Assert.Contains("--prompt-cache must be 0 (off) or more, got -1", Assert.Throws<ArgumentException>(() => new ServeOptions { PromptCacheEntries = -1 }.Validate()).Message);
        new ServeOptions { Preview = "none", PromptCacheEntries = 0 }.Validate();
    }
}
