using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using PixArtSharp.Cli.Serve.Queue;
using StackExchange.Redis;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve.Queue;

/// <summary>
/// <c>pixart serve --queue</c> fronts and <c>pixart worker</c>s over a real redis-server on a free loopback port:
/// answers equal to <c>pixart generate</c>'s whichever worker ran the job, a worker SIGKILLed mid-job, a front
/// restarted with jobs queued, Redis stopped and started again, cancellation reaching the worker.
/// </summary>
[Collection("Serve")]
public sealed class RedisQueueTests(ServeFixture fx, ITestOutputHelper output)
{
    private static Dictionary<string, object?> Request(string prompt, long seed, int side = 64, int steps = 2)
    {
        var r = Api.Small(prompt, seed, steps);
        r["width"] = side;
        r["height"] = side;
        return r;
    }

    /// <summary>The in-process server's answers (GenerationQueue, the same code `pixart serve` runs) for these requests.</summary>
    private async Task<string[]> InProcessPngs(IReadOnlyList<Dictionary<string, object?>> requests)
    {
        await using var app = await TestApp.StartAsync(fx);
        var pngs = new string[requests.Count];
        for (int i = 0; i < requests.Count; i++)
        {
            var r = await Api.Post(app.Client, requests[i]);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            pngs[i] = (await Api.ReadJson(r)).GetProperty("data")[0].GetProperty("b64_json").GetString()!;
        }
        return pngs;
    }

    /// <summary>What `pixart generate` writes for a request (in-process, into a temporary folder).</summary>
    private string CliPng(Dictionary<string, object?> request)
    {
        string dir = Directory.CreateTempSubdirectory("pixart-queue-cli-").FullName;
        try
        {
            string I(string k) => Convert.ToString(request[k], CultureInfo.InvariantCulture)!;
            var r = PixArtSharp.Tests.Cli.CliRunner.Run("generate", I("prompt"), "--model", fx.Folder, "--seed", I("seed"),
                "-W", I("width"), "-H", I("height"), "--steps", I("steps"), "--no-resolution-binning", "-o", Path.Combine(dir, "out.png"), "--quiet");
            Assert.True(r.ExitCode == 0, r.ToString());
            return Convert.ToBase64String(File.ReadAllBytes(Path.Combine(dir, "out.png")));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private sealed record LoadResult(double RequestsPerSecond, double P50, double P95, HttpStatusCode[] Status, string[] Pngs);

    /// <summary>requests.Count requests from `clients` concurrent clients, synchronous (the POST answers the images).</summary>
    private static async Task<LoadResult> Load(string baseUrl, IReadOnlyList<Dictionary<string, object?>> requests, int clients)
    {
        int next = -1;
        var status = new HttpStatusCode[requests.Count];
        var pngs = new string[requests.Count];
        var seconds = new double[requests.Count];
        var sw = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
        {
            using var client = new HttpClient { BaseAddress = new Uri(baseUrl), Timeout = TimeSpan.FromMinutes(2) };
            int i;
            while ((i = Interlocked.Increment(ref next)) < requests.Count)
            {
                var t0 = sw.Elapsed;
                var r = await Api.Post(client, requests[i]);
                var json = await Api.ReadJson(r);
                seconds[i] = (sw.Elapsed - t0).TotalSeconds;
                status[i] = r.StatusCode;
                pngs[i] = r.StatusCode == HttpStatusCode.OK ? json.GetProperty("data")[0].GetProperty("b64_json").GetString()! : json.ToString();
            }
        }));
        double total = sw.Elapsed.TotalSeconds;
        var sorted = seconds.Order().ToArray();
        double P(double q) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        return new LoadResult(requests.Count / total, P(0.50), P(0.95), status, pngs);
    }

    [Fact]
    public async Task OneFrontAndTwoWorkersAnswer40RequestsFrom8ClientsWithTheImagesOfPixartGenerate()
    {
        const int requests = 40, clients = 8;
        var one = Enumerable.Range(0, requests).Select(i => Request($"one worker {i}", 3000 + i)).ToArray();
        var two = Enumerable.Range(0, requests).Select(i => Request($"two workers {i}", 4000 + i)).ToArray();
        var expected = await InProcessPngs(two);
        // The in-process answers are pixart generate's (ServeApiTests); check two of them here as well.
        Assert.Equal(CliPng(two[0]), expected[0]);
        Assert.Equal(CliPng(two[17]), expected[17]);

        using var redis = new RedisTestServer();
        await using var front = await QueueFront.StartAsync(fx, redis);
        LoadResult a, b, c;
        // Each phase starts with a warm-up round (first calls compile and allocate), not counted in its figures;
        // one worker is measured again after the two-worker phase, when the JIT has settled.
        var warm = Enumerable.Range(0, clients).Select(i => Request($"warm-up {i}", 9000 + i)).ToArray();
        var again = Enumerable.Range(0, requests).Select(i => Request($"one worker again {i}", 5000 + i)).ToArray();
        await using (var w1 = new InProcessWorker(fx, redis, "w1"))
        {
            await Load(front.BaseUrl, warm, clients);
            a = await Load(front.BaseUrl, one, clients);
            await using (var w2 = new InProcessWorker(fx, redis, "w2"))
            {
                await Load(front.BaseUrl, warm, clients);
                b = await Load(front.BaseUrl, two, clients);
                Assert.True(w2.Worker.Completed > 0 && w1.Worker.Completed > a.Status.Length + warm.Length, $"both workers ran jobs (w1 {w1.Worker.Completed}, w2 {w2.Worker.Completed})");
            }
            c = await Load(front.BaseUrl, again, clients);
            output.WriteLine(w1.Log.ToString());
        }
        foreach (var (label, r) in new[] { ("1 worker", a), ("2 workers", b), ("1 worker (again)", c) })
            output.WriteLine($"1 front + {label}, {requests} requests from {clients} clients, 64×64, 2 steps: {r.RequestsPerSecond:F1} req/s, p50 {r.P50 * 1000:F0} ms, p95 {r.P95 * 1000:F0} ms");

        Assert.All(a.Status.Concat(c.Status), s => Assert.Equal(HttpStatusCode.OK, s));
        Assert.All(b.Status, s => Assert.Equal(HttpStatusCode.OK, s));
        for (int i = 0; i < requests; i++)
            Assert.True(expected[i] == b.Pngs[i], $"request {i}: the queued answer differs from pixart generate's");
        Assert.Equal(requests, a.Pngs.Distinct().Count());
        await AssertStreamEmpty(redis);
    }

    [Fact]
    public async Task AWorkerKilledMidJobAndAFrontRestartedWithJobsQueuedLoseNoAnswer()
    {
        const int jobs = 4;
        var requests = Enumerable.Range(0, jobs).Select(i => Request($"survivor {i}", 500 + i, side: 256, steps: 16)).ToArray();
        var clock = Stopwatch.StartNew();
        var expected = await InProcessPngs(requests);
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: in-process answers");

        using var redis = new RedisTestServer();
        var ids = new string[jobs];
        // 1. Jobs queued through a front that then goes away (no worker yet: they wait in Redis).
        await using (var first = await QueueFront.StartAsync(fx, redis))
        {
            using var c = first.Client();
            for (int i = 0; i < jobs; i++)
            {
                var r = await Api.Post(c, requests[i], "?async=true");
                Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
                ids[i] = (await Api.ReadJson(r)).GetProperty("id").GetString()!;
            }
        }
        await using var front = await QueueFront.StartAsync(fx, redis);
        using var client = front.Client();
        Assert.Equal("queued", (await Api.ReadJson(await client.GetAsync($"/v1/jobs/{ids[0]}"))).GetProperty("status").GetString());

        // 2. Two worker processes; the first is SIGKILLed while it is in the middle of a job.
        using var mux = Connected(redis);
        var db = mux.GetDatabase();
        using var w1 = new ChildWorker(fx, redis, "w1", "--visibility-timeout", "2", "--max-batch", "1");
        using var w2 = new ChildWorker(fx, redis, "w2", "--visibility-timeout", "2", "--max-batch", "1");
        await w1.WaitReady(TimeSpan.FromSeconds(90));
        string? victim = null;
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (victim is null)
        {
            foreach (var id in ids)
            {
                var v = await db.HashGetAsync(RedisKeys.Job(id), ["status", "worker", "step", "total_steps"]);
                if (v[0] == "running" && v[1] == "w1" && (int)v[2] >= 1 && (int)v[2] < (int)v[3] - 2)
                {
                    w1.Kill();
                    victim = id;
                    output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: killed w1 at step {v[2]}/{v[3]} of {id}");
                    break;
                }
            }
            Assert.True(DateTime.UtcNow < until, "w1 never ran a job:\n" + w1.Log);
            if (victim is null) await Task.Delay(10);
        }
        await w2.WaitReady(TimeSpan.FromSeconds(90));
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: w1 killed, w2 ready");

        // 3. Every job completes, through the restarted front, with its own image: none lost, none answered twice.
        for (int i = 0; i < jobs; i++)
        {
            var job = await Api.WaitJob(client, ids[i], TimeSpan.FromSeconds(120));
            Assert.True(job.GetProperty("status").GetString() == "succeeded", job.ToString() + "\n" + w2.Log);
            Assert.Equal(ids[i], job.GetProperty("result").GetProperty("id").GetString());
            Assert.True(expected[i] == Convert.ToBase64String(Api.FirstPng(job.GetProperty("result"))), $"job {i}: differs from pixart generate's image");
        }
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s: all {jobs} jobs answered");
        var vv = await db.HashGetAsync(RedisKeys.Job(victim), ["attempts", "worker"]);
        Assert.Equal(2, (int)vv[0]); // started on w1, finished on w2
        Assert.Equal("w2", (string?)vv[1]);
        await AssertStreamEmpty(redis);
    }

    [Fact]
    public async Task RedisStoppedAndStartedAgainGives503MeanwhileAndWorkResumes_CancellationReachesTheWorker()
    {
        using var redis = new RedisTestServer();
        await using var front = await QueueFront.StartAsync(fx, redis);
        await using var worker = new InProcessWorker(fx, redis, "w1");
        using var client = front.Client();
        var first = await Api.Post(client, Request("before", 1));
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);

        // A running job cancelled at the front stops at its worker.
        var slow = await Api.ReadJson(await Api.Post(client, Request("cancel me", 2, side: 256, steps: 50), "?async=true"));
        string slowId = slow.GetProperty("id").GetString()!;
        using (var mux = Connected(redis))
        {
            var db = mux.GetDatabase();
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while ((int)await db.HashGetAsync(RedisKeys.Job(slowId), "step") < 1)
            {
                Assert.True(DateTime.UtcNow < until, "the job never started");
                await Task.Delay(10);
            }
            var del = await client.DeleteAsync($"/v1/jobs/{slowId}");
            Assert.Equal(HttpStatusCode.OK, del.StatusCode);
            until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while ((string?)await db.HashGetAsync(RedisKeys.Job(slowId), "status") != "cancelled")
            {
                Assert.True(DateTime.UtcNow < until, "the worker did not stop the job");
                await Task.Delay(20);
            }
            Assert.True((int)await db.HashGetAsync(RedisKeys.Job(slowId), "step") < 50, "stopped before its last step");
        }

        // Redis goes away: the front answers 503 with Retry-After at once, and says so on /health.
        redis.Stop(save: true);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        HttpResponseMessage during;
        var sw = Stopwatch.StartNew();
        while (true)
        {
            sw.Restart();
            during = await Api.Post(client, Request("during", 3));
            if (during.StatusCode == HttpStatusCode.ServiceUnavailable) break;
            Assert.True(DateTime.UtcNow < deadline, $"still {(int)during.StatusCode} with Redis down");
            await Task.Delay(50);
        }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3), $"a 503 took {sw.Elapsed.TotalSeconds:F1} s");
        Assert.Equal("2", during.Headers.GetValues("Retry-After").Single());
        Assert.Equal("queue_unavailable", (await Api.ReadJson(during)).GetProperty("error").GetProperty("code").GetString());
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await client.GetAsync("/health")).StatusCode);

        // Redis is back (with its data): the front and the worker reconnect by themselves and work resumes.
        redis.Start();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        HttpResponseMessage after;
        while ((after = await Api.Post(client, Request("after", 4))).StatusCode != HttpStatusCode.OK)
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, after.StatusCode);
            Assert.True(DateTime.UtcNow < deadline, "the front never came back");
            await Task.Delay(100);
        }
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/health")).StatusCode);
        // A job answered before the outage is still there to read.
        string firstId = first.Headers.GetValues("X-Job-Id").Single();
        Assert.Equal("succeeded", (await Api.WaitJob(client, firstId)).GetProperty("status").GetString());
    }

    [Fact]
    public async Task AJobWhoseWorkersKeepDyingFailsClearlyAndAJobAlreadyAnsweredIsNotRunAgain()
    {
        using var redis = new RedisTestServer();
        await using var front = await QueueFront.StartAsync(fx, redis);
        using var client = front.Client();
        var lost = (await Api.ReadJson(await Api.Post(client, Request("lost", 1), "?async=true"))).GetProperty("id").GetString()!;
        var done = (await Api.ReadJson(await Api.Post(client, Request("done", 2), "?async=true"))).GetProperty("id").GetString()!;

        // A "ghost" worker reads both and dies: one after three starts, one after storing its result but before
        // acknowledging it.
        using var mux = Connected(redis);
        var db = mux.GetDatabase();
        var stream = RedisKeys.Stream(ServeFixture.ModelLabel);
        await db.StreamCreateConsumerGroupAsync(stream, RedisKeys.Group, "0-0");
        Assert.Equal(2, (await db.StreamReadGroupAsync(stream, RedisKeys.Group, "ghost", ">", 10)).Length);
        await db.HashSetAsync(RedisKeys.Job(lost), "attempts", 3);
        var stored = JsonSerializer.Serialize(new PixArtSharp.Cli.Serve.ImagesResponse(1, [new("c3RvcmVk", 2, "stored", "done")], done,
            PixArtSharp.Pipeline.GenerationSettings.FromJson((string)(await db.HashGetAsync(RedisKeys.Job(done), "settings"))!), 1),
            PixArtSharp.Cli.Serve.ServerApp.Json);
        await db.HashSetAsync(RedisKeys.Job(done), [new("status", "succeeded"), new("result", stored)]);

        await using var worker = new InProcessWorker(fx, redis, "w1", visibilitySeconds: 1);
        var failed = await Api.WaitJob(client, lost, TimeSpan.FromSeconds(30));
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Equal("worker_lost", failed.GetProperty("error").GetProperty("code").GetString());
        Assert.Contains("started 3 times", failed.GetProperty("error").GetProperty("message").GetString());
        var answered = await Api.WaitJob(client, done, TimeSpan.FromSeconds(30));
        Assert.Equal("c3RvcmVk", answered.GetProperty("result").GetProperty("data")[0].GetProperty("b64_json").GetString()); // the first result
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (await db.StreamLengthAsync(stream) > 0 && DateTime.UtcNow < until) await Task.Delay(50);
        await AssertStreamEmpty(redis);
        Assert.Equal(0, worker.Worker.Completed); // neither job ran again
    }

    [Fact]
    public void WorkerParsesItsOptions()
    {
        var cmd = PixArtSharp.Cli.Worker.WorkerCommand.Create();
        Assert.NotEmpty(cmd.Parse([]).Errors); // --queue is required
        var parse = cmd.Parse(["--queue", "redis://127.0.0.1:6379", "--model", "m", "--max-batch", "2", "--visibility-timeout", "5", "--max-attempts", "2", "--result-ttl", "60", "--name", "gpu0", "--device", "cuda:1"]);
        Assert.Empty(parse.Errors);
        Assert.Equal((2, 5.0, 2, 60.0, "gpu0", "cuda:1"), (parse.GetValue<int>("--max-batch"), parse.GetValue<double>("--visibility-timeout"),
            parse.GetValue<int>("--max-attempts"), parse.GetValue<double>("--result-ttl"), parse.GetValue<string?>("--name"), parse.GetValue<string>("--device")));
        var bad = PixArtSharp.Tests.Cli.CliRunner.Run("worker", "--queue", "localhost:6379", "--model", "m");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--queue must look like redis://HOST:PORT", bad.Stderr);
    }

    [Theory]
    [InlineData("redis://127.0.0.1:6390", "127.0.0.1", 6390, 0)]
    [InlineData("redis://cache.internal/3", "cache.internal", 6379, 3)]
    [InlineData("redis://:s3cret@10.0.0.5:7000/1", "10.0.0.5", 7000, 1)]
    public void QueueAddressesParse(string url, string host, int port, int db)
    {
        var a = RedisQueueAddress.Parse(url);
        Assert.Equal((host, port, db), (a.Host, a.Port, a.Database));
        Assert.DoesNotContain("s3cret", a.ToString()); // logs and errors never show the password
    }

    [Theory]
    [InlineData("127.0.0.1:6379")]
    [InlineData("http://127.0.0.1:6379")]
    [InlineData("redis://127.0.0.1:6379/x")]
    [InlineData("redis://127.0.0.1:6379/16")]
    public void BadQueueAddressesNameTheOptionAndTheForm(string url)
    {
        var e = Assert.Throws<ArgumentException>(() => RedisQueueAddress.Parse(url));
        Assert.Contains("--queue", e.Message);
    }

    private static async Task AssertStreamEmpty(RedisTestServer redis)
    {
        using var mux = Connected(redis);
        var db = mux.GetDatabase();
        var stream = RedisKeys.Stream(ServeFixture.ModelLabel);
        Assert.Equal(0, await db.StreamLengthAsync(stream));
        Assert.Equal(0, (await db.StreamPendingAsync(stream, RedisKeys.Group)).PendingMessageCount);
    }

    /// <summary>
    /// A test's own connection, once it is up: the queue's options fail commands at once while not connected (what a
    /// front wants while Redis is down), and a fresh connection may still be handshaking when its first command goes.
    /// </summary>
    private static ConnectionMultiplexer Connected(RedisTestServer redis)
    {
        var mux = redis.Address.Connect("test");
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!mux.IsConnected && DateTime.UtcNow < deadline) Thread.Sleep(20);
        Assert.True(mux.IsConnected, "the test could not connect to its redis-server within 15 s");
        return mux;
    }
}
