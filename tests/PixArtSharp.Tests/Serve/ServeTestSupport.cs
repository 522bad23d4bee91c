using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;

namespace PixArtSharp.Tests.Serve;

/// <summary>
/// The model every server test uses, loaded once (the tests run one after another): the tiny PixArt-LCM fixture —
/// its tokenizer, T5, VAE and LCM scheduler as they are — with its transformer widened from 24 to 96 channels
/// (random weights, same layout and keys).
/// Why wider: libtorch's elementwise kernels run whole SIMD chunks of 32 floats and finish a tensor's remainder
/// with scalar code, which rounds differently in the last bit. The fixture's 24-wide (and 8-wide size-embedding)
/// per-sample vectors fall in that remainder alone but inside SIMD chunks once batched, so a batch could never be
/// bit-identical to a run alone. Real PixArt widths (1152, 6·1152, 384, 4 × (H/8) × (W/8) latents at the
/// aspect-ratio bins) are multiples of 32, as are this model's, so the batching test checks what production sees.
/// </summary>
public sealed class ServeFixture : IDisposable
{
    public const string ModelLabel = "tiny-pixart-lcm";
    public string Folder { get; }
    public PixArtAlphaPipeline Pipeline { get; }
    /// <summary>What the images record, as `pixart generate --model Folder` records it.</summary>
    public PixArtSharp.Imaging.ModelInfo Model => new(Folder, null, null, "fp32");

    public ServeFixture()
    {
        Folder = Path.Combine(Path.GetTempPath(), "pixart-serve-tests-" + Guid.NewGuid().ToString("N")[..8], ModelLabel);
        BuildWideModel(Fixtures.Path("tiny-pixart-lcm"), Folder);
        Pipeline = PixArtAlphaPipeline.FromPretrained(Folder);
    }

    private static void BuildWideModel(string source, string target)
    {
        Directory.CreateDirectory(Path.Combine(target, "transformer"));
        File.Copy(Path.Combine(source, "model_index.json"), Path.Combine(target, "model_index.json"));
        foreach (var component in new[] { "scheduler", "text_encoder", "tokenizer", "vae" })
        {
            // Copies (3 MB), not links: the fixtures stay untouchable whatever happens to this folder.
            Directory.CreateDirectory(Path.Combine(target, component));
            foreach (var f in Directory.GetFiles(Path.Combine(source, component)))
                File.Copy(f, Path.Combine(target, component, Path.GetFileName(f)));
        }

        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(source, "transformer", "config.json")))!.AsObject();
        config["attention_head_dim"] = 48;   // 2 heads × 48 = 96 channels (was 2 × 12 = 24)
        config["cross_attention_dim"] = 96;
        File.WriteAllText(Path.Combine(target, "transformer", "config.json"), config.ToJsonString());
        // Old width → new: D 24 → 96, 4·D (feed-forward) 96 → 384, 6·D 144 → 576, D/3 (size embeddings) 8 → 32.
        var widen = new Dictionary<long, long> { [24] = 96, [96] = 384, [144] = 576, [8] = 32 };
        using var file = PixArtSharp.Loading.SafeTensorsFile.Open(Path.Combine(source, "transformer", "diffusion_pytorch_model.safetensors"));
        using var gen = new TorchSharp.torch.Generator(2024);
        var tensors = new Dictionary<string, TorchSharp.torch.Tensor>();
        foreach (var (name, info) in file.Tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            long[] shape = info.Shape.Select(d => widen.GetValueOrDefault(d, d)).ToArray();
            tensors[name] = TorchSharp.torch.randn(shape, generator: gen).mul_(name.EndsWith("bias", StringComparison.Ordinal) ? 0.01 : 0.08);
        }
        PixArtSharp.Loading.SafeTensorsWriter.Write(Path.Combine(target, "transformer", "diffusion_pytorch_model.safetensors"), tensors);
        foreach (var t in tensors.Values) t.Dispose();
    }

    public void Dispose()
    {
        Pipeline.Dispose();
        try { Directory.Delete(Path.GetDirectoryName(Folder)!, recursive: true); } catch (IOException) { }
    }
}

[CollectionDefinition("Serve")]
public sealed class ServeCollection : ICollectionFixture<ServeFixture>;

/// <summary>A server under test: in memory (TestServer) or on a real loopback port (Kestrel).</summary>
public sealed class TestApp : IAsyncDisposable
{
    public required GenerationQueue Queue { get; init; }
    public required WebApplication App { get; init; }
    public required HttpClient Client { get; init; }
    /// <summary>http://127.0.0.1:port for Kestrel; null in memory.</summary>
    public string? BaseUrl { get; init; }

    public static async Task<TestApp> StartAsync(ServeFixture fx, ServeOptions? options = null, bool kestrel = false)
    {
        options ??= new ServeOptions();
        options = options with { Host = "127.0.0.1", Port = 0 };
        var queue = new GenerationQueue(fx.Pipeline, fx.Model, options.MaxQueue, options.MaxBatch, options.KeepFinished);
        var app = ServerApp.Build(options, queue, kestrel ? null : b => b.WebHost.UseTestServer());
        await app.StartAsync();
        if (!kestrel)
            return new TestApp { Queue = queue, App = app, Client = app.GetTestClient() };
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new TestApp { Queue = queue, App = app, Client = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromMinutes(2) }, BaseUrl = url };
    }

    public async ValueTask DisposeAsync()
    {
        Queue.Dispose();
        Client.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
    }
}

public static class Api
{
    /// <summary>A small, fast request for the tiny model: 64×64 without binning (the tiny model's bins are 1024-sized).</summary>
    public static Dictionary<string, object?> Small(string prompt, long seed, int steps = 2) => new()
    {
        ["prompt"] = prompt,
        ["seed"] = seed,
        ["width"] = 64,
        ["height"] = 64,
        ["steps"] = steps,
        ["resolution_binning"] = false,
    };

    public static StringContent Json(object body) =>
        new(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");

    public static Task<HttpResponseMessage> Post(HttpClient c, object body, string query = "", CancellationToken ct = default) =>
        c.PostAsync("/v1/images/generations" + query, Json(body), ct);

    public static async Task<JsonElement> ReadJson(HttpResponseMessage r)
    {
        string text = await r.Content.ReadAsStringAsync();
        try { return JsonDocument.Parse(text).RootElement.Clone(); }
        catch (JsonException) { throw new Xunit.Sdk.XunitException($"{(int)r.StatusCode}: not JSON: {text}"); }
    }

    /// <summary>Polls GET /v1/jobs/{id} until the job is finished.</summary>
    public static async Task<JsonElement> WaitJob(HttpClient c, string id, TimeSpan? timeout = null)
    {
        var until = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            var job = await ReadJson(await c.GetAsync($"/v1/jobs/{id}"));
            string status = job.GetProperty("status").GetString()!;
            if (status is "succeeded" or "failed" or "cancelled") return job;
            if (DateTime.UtcNow > until) throw new TimeoutException($"job {id} still {status}");
            await Task.Delay(20);
        }
    }

    public static byte[] FirstPng(JsonElement imagesResponse) =>
        Convert.FromBase64String(imagesResponse.GetProperty("data")[0].GetProperty("b64_json").GetString()!);

    public static void Bearer(HttpClient c, string? token) =>
        c.DefaultRequestHeaders.Authorization = token is null ? null : new AuthenticationHeaderValue("Bearer", token);
}
