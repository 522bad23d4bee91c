using System.Diagnostics;
using System.Net;
using System.Text.Json;
using PixArtSharp.Cli.Serve;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>The server on a real loopback port (Kestrel): disconnects, and a bounded load test.</summary>
[Collection("Serve")]
public sealed class ServeLoopbackTests(ServeFixture fx, ITestOutputHelper output)
{
    [Fact]
    public async Task AClientThatDisconnectsCancelsItsJob()
    {
        await using var app = await TestApp.StartAsync(fx, kestrel: true);

        // 1. A waiting (synchronous) request whose client gives up while it is queued.
        using (app.Queue.Hold())
        {
            using var cts = new CancellationTokenSource();
            var pending = Api.Post(app.Client, Api.Small("abandoned", 1), ct: cts.Token);
            await WaitUntil(() => app.Queue.Pending == 1);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending);
            await WaitUntil(() => app.Queue.Pending == 0); // only a cancellation empties a held queue
        }

        // 2. A streaming request whose client goes away while its job runs.
        using var started = new SemaphoreSlim(0);
        using var go = new SemaphoreSlim(0);
        app.Queue.BeforeBatch = _ => { started.Release(); go.Wait(); };
        string id;
        using (var stream = new HttpRequestMessage(HttpMethod.Post, "/v1/images/generations?stream=true") { Content = Api.Json(Api.Small("gone", 2, steps: 8)) })
        {
            var r = await app.Client.SendAsync(stream, HttpCompletionOption.ResponseHeadersRead);
            id = r.Headers.GetValues("X-Job-Id").Single();
            Assert.True(await started.WaitAsync(TimeSpan.FromSeconds(30)));
            r.Dispose(); // closes the connection
        }
        await WaitUntil(async () => (await Api.ReadJson(await app.Client.GetAsync($"/v1/jobs/{id}"))).GetProperty("status").GetString() == "cancelled");
        go.Release();
        app.Queue.BeforeBatch = null;
        Assert.Equal(HttpStatusCode.OK, (await Api.Post(app.Client, Api.Small("next", 3))).StatusCode);
    }

    [Fact]
    public async Task LoadTest50RequestsFrom8ClientsAreAllAnswered()
    {
        const int requests = 50, clients = 8;
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxBatch = 4, MaxQueue = 64 }, kestrel: true);
        var next = -1;
        var results = new (long Seed, HttpStatusCode Status, double Seconds, int Batch, string Png)[requests];
        var sw = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async c =>
        {
            using var client = new HttpClient { BaseAddress = new Uri(app.BaseUrl!), Timeout = TimeSpan.FromMinutes(2) };
            int i;
            while ((i = Interlocked.Increment(ref next)) < requests)
            {
                var t0 = sw.Elapsed;
                var r = await Api.Post(client, Api.Small($"load test image {i}", 1000 + i));
                var json = await Api.ReadJson(r);
                results[i] = r.StatusCode == HttpStatusCode.OK
                    ? (json.GetProperty("data")[0].GetProperty("seed").GetInt64(), r.StatusCode, (sw.Elapsed - t0).TotalSeconds,
                       json.GetProperty("batch_size").GetInt32(), json.GetProperty("data")[0].GetProperty("b64_json").GetString()!)
                    : (-1, r.StatusCode, (sw.Elapsed - t0).TotalSeconds, 0, "");
            }
        }));
        double total = sw.Elapsed.TotalSeconds;

        Assert.All(results, r => Assert.Equal(HttpStatusCode.OK, r.Status));
        Assert.Equal(Enumerable.Range(0, requests).Select(i => 1000L + i), results.Select(r => r.Seed)); // each got its own
        Assert.Equal(requests, results.Select(r => r.Png).Distinct().Count());
        Assert.Equal(requests, app.Queue.Completed);
        Assert.True(app.Queue.Batches < requests, "concurrent compatible requests were batched");
        // Spot-check: a batched answer equals that request alone.
        int k = Array.FindIndex(results, r => r.Batch > 1);
        var alone = await Api.ReadJson(await Api.Post(app.Client, Api.Small($"load test image {k}", 1000 + k)));
        Assert.Equal(results[k].Png, alone.GetProperty("data")[0].GetProperty("b64_json").GetString());

        var lat = results.Select(r => r.Seconds).Order().ToArray();
        output.WriteLine($"load test: {requests} requests from {clients} clients on {app.BaseUrl}: all 200 in {total:F2} s " +
                         $"({requests / total:F1} req/s); latency p50 {lat[requests / 2] * 1000:F0} ms, p95 {lat[(int)(requests * 0.95)] * 1000:F0} ms, " +
                         $"max {lat[^1] * 1000:F0} ms; {app.Queue.Batches} batches (mean {requests / (double)app.Queue.Batches:F2} requests/batch, " +
                         $"sizes {string.Join(",", results.GroupBy(r => r.Batch).OrderBy(g => g.Key).Select(g => $"{g.Key}×{g.Count()}"))}); rejected {app.Queue.Rejected}");
    }

    private static async Task WaitUntil(Func<bool> condition) => await WaitUntil(() => Task.FromResult(condition()));

    private static async Task WaitUntil(Func<Task<bool>> condition)
    {
        var until = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException("condition not met in 30 s");
            await Task.Delay(20);
        }
    }
}
