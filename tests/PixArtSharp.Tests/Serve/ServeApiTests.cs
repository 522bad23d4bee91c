using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Serve;

/// <summary>The HTTP API on the tiny PixArt-LCM fixture model, in memory (TestServer).</summary>
[Collection("Serve")]
public sealed class ServeApiTests(ServeFixture fx, ITestOutputHelper output)
{
    private PixArtAlphaPipeline Pipe => fx.Pipeline;

    /// <summary>The PNG files `pixart generate` writes for these settings (run in-process, into a temporary folder).</summary>
    private byte[][] CliPngs(GenerationSettings s)
    {
        string dir = Directory.CreateTempSubdirectory("pixart-serve-cli-").FullName;
        try
        {
            var args = new List<string>
            {
                "generate", s.Prompts[0], "--model", fx.Folder, "--seed", s.Seed!.Value.ToString(CultureInfo.InvariantCulture),
                "-W", s.Width!.Value.ToString(CultureInfo.InvariantCulture), "-H", s.Height!.Value.ToString(CultureInfo.InvariantCulture),
                "--steps", s.Steps!.Value.ToString(CultureInfo.InvariantCulture), "-o", Path.Combine(dir, "out.png"), "--quiet",
            };
            if (!s.ResolutionBinning) args.Add("--no-resolution-binning");
            if (s.Style is not null) args.AddRange(["--style", s.Style]);
            if (s.NegativePrompt.Length > 0) args.AddRange(["--negative-prompt", s.NegativePrompt]);
            if (s.Guidance is { } g) args.AddRange(["--guidance", g.ToString(CultureInfo.InvariantCulture)]);
            if (s.NumImages > 1) args.AddRange(["--num-images", s.NumImages.ToString(CultureInfo.InvariantCulture)]);
            if (s.Scheduler is not null) args.AddRange(["--scheduler", s.Scheduler]);
            var r = PixArtSharp.Tests.Cli.CliRunner.Run([.. args]);
            Assert.True(r.ExitCode == 0, r.ToString());
            return s.NumImages == 1
                ? [File.ReadAllBytes(Path.Combine(dir, "out.png"))]
                : Enumerable.Range(0, s.NumImages).Select(i => File.ReadAllBytes(Path.Combine(dir, $"out-{i}.png"))).ToArray();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private byte[] CliPng(GenerationSettings settings) => CliPngs(settings).Single();

    private static GenerationSettings SmallSettings(string prompt, long seed, int steps = 2) => new()
    {
        Prompts = [prompt],
        Seed = seed,
        Width = 64,
        Height = 64,
        Steps = steps,
        ResolutionBinning = false,
    };

    [Fact]
    public async Task GeneratesTheSamePngAsPixartGenerate()
    {
        await using var app = await TestApp.StartAsync(fx);
        var body = Api.Small("a red fox in the snow", 42);
        body["negative_prompt"] = "blurry";
        body["style"] = "Anime";
        var r = await Api.Post(app.Client, body);
        var json = await Api.ReadJson(r);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.True(json.GetProperty("created").GetInt64() > 1_700_000_000);
        var img = json.GetProperty("data")[0];
        Assert.Equal(42, img.GetProperty("seed").GetInt64());
        string parameters = img.GetProperty("parameters").GetString()!;
        Assert.StartsWith("anime artwork a red fox in the snow", parameters);
        Assert.Contains("Negative prompt: photo, deformed, black and white, realism, disfigured, low contrastblurry", parameters);
        Assert.Contains("Steps: 2, Sampler: LCM, CFG scale: 0, Seed: 42, Size: 64x64, Model: tiny-pixart-lcm", parameters);
        Assert.False(r.Headers.Contains("Server"));

        byte[] served = Api.FirstPng(json);
        byte[] cli = CliPng(SmallSettings("a red fox in the snow", 42) with { NegativePrompt = "blurry", Style = "Anime" });
        Assert.Equal(cli, served);
        Assert.Equal(new byte[] { 137, 80, 78, 71, 13, 10, 26, 10 }, served[..8]);
        output.WriteLine($"PNG {served.Length} bytes, identical to pixart generate's; parameters: {parameters.Replace('\n', '|')}");
    }

    [Fact]
    public async Task SeveralImagesPerRequestShareTheSeedAndMatchTheCli()
    {
        await using var app = await TestApp.StartAsync(fx);
        var body = Api.Small("two lighthouses", 5);
        body["n"] = 2;
        var json = await Api.ReadJson(await Api.Post(app.Client, body));
        Assert.Equal(2, json.GetProperty("data").GetArrayLength());

        var cli = CliPngs(SmallSettings("two lighthouses", 5) with { NumImages = 2 });
        for (int k = 0; k < 2; k++)
        {
            var img = json.GetProperty("data")[k];
            Assert.Equal(5, img.GetProperty("seed").GetInt64());
            Assert.Equal(cli[k], Convert.FromBase64String(img.GetProperty("b64_json").GetString()!));
        }
        Assert.NotEqual(json.GetProperty("data")[0].GetProperty("b64_json").GetString(), json.GetProperty("data")[1].GetProperty("b64_json").GetString());
    }

    [Fact]
    public async Task SaSolverFromTheApiMatchesTheCli()
    {
        await using var app = await TestApp.StartAsync(fx);
        var body = Api.Small("a misty valley", 21, steps: 3);
        body["scheduler"] = "sa-solver";
        body["guidance"] = 3;
        var json = await Api.ReadJson(await Api.Post(app.Client, body));
        string parameters = json.GetProperty("data")[0].GetProperty("parameters").GetString()!;
        Assert.Contains("Steps: 3, Sampler: SA-Solver, CFG scale: 3, Seed: 21", parameters);
        Assert.Equal(CliPng(SmallSettings("a misty valley", 21, steps: 3) with { Scheduler = "sa-solver", Guidance = 3 }), Api.FirstPng(json));

        var models = await Api.ReadJson(await app.Client.GetAsync("/v1/models"));
        var defaults = models.GetProperty("data")[0].GetProperty("scheduler_defaults");
        Assert.Equal(25, defaults.GetProperty("sa-solver").GetProperty("steps").GetInt32());
        Assert.Equal(3, defaults.GetProperty("sa-solver").GetProperty("guidance").GetDouble());
        Assert.Equal(4, defaults.GetProperty("lcm").GetProperty("steps").GetInt32());
        Assert.Equal(4.5, defaults.GetProperty("dpm-solver").GetProperty("guidance").GetDouble());
    }

    public static IEnumerable<object[]> BadRequests() =>
    [
        ["{}", "prompt"],
        ["{\"prompt\": \"x\", \"steps\": 51}", "steps"],
        ["{\"prompt\": \"x\", \"steps\": 0}", "steps"],
        ["{\"prompt\": \"x\", \"width\": 4096}", "width"],
        ["{\"prompt\": \"x\", \"height\": 2056}", "height"],
        // Without binning the sides must split into patches (16 px on these models); with binning 100 is fine.
        ["{\"prompt\": \"x\", \"width\": 100, \"resolution_binning\": false}", "width"],
        ["{\"prompt\": \"x\", \"width\": 64, \"height\": 24, \"resolution_binning\": false}", "height"],
        ["{\"prompt\": \"x\", \"size\": \"big\"}", "size"],
        ["{\"prompt\": \"x\", \"size\": \"4096x1024\"}", "size"],
        ["{\"prompt\": \"x\", \"n\": 9}", "n"],
        ["{\"prompt\": \"x\", \"n\": 0}", "n"],
        ["{\"prompt\": \"" + new string('a', 2001) + "\"}", "prompt"],
        ["{\"prompt\": \"x\", \"negative_prompt\": \"" + new string('a', 2001) + "\"}", "negative_prompt"],
        ["{\"prompt\": \"x\", \"guidance\": 21}", "guidance"],
        ["{\"prompt\": \"x\", \"seed\": -1}", "seed"],
        ["{\"prompt\": \"x\", \"style\": \"Watercolor\"}", "style"],
        ["{\"prompt\": \"x\", \"scheduler\": \"euler\"}", "scheduler"],
        ["{\"prompt\": \"x\", \"num_steps\": 4}", "num_steps"],
        ["{\"prompt\": \"x\", \"steps\": \"four\"}", "steps"],
        ["{\"prompt\": \"x\", \"response_format\": \"url\"}", "response_format"],
        ["{\"prompt\": \"x\",", ""],
        ["[1, 2]", ""],
        ["null", ""],
        ["", ""],
    ];

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task InvalidRequestsAnswer400WithAJsonError(string body, string param)
    {
        await using var app = await TestApp.StartAsync(fx);
        var r = await app.Client.PostAsync("/v1/images/generations", new StringContent(body, Encoding.UTF8, "application/json"));
        var json = await Api.ReadJson(r);
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        var error = json.GetProperty("error");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        string message = error.GetProperty("message").GetString()!;
        Assert.False(string.IsNullOrWhiteSpace(message));
        Assert.DoesNotContain("(Parameter", message);
        if (param.Length > 0) Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.Equal(0, app.Queue.Pending + app.Queue.Running); // nothing was queued
        output.WriteLine($"{body[..Math.Min(body.Length, 40)]} → 400 {param}: {message}");
    }

    [Fact]
    public async Task WrongContentTypeAndOversizedBodiesAreRefused()
    {
        await using var app = await TestApp.StartAsync(fx);
        var r = await app.Client.PostAsync("/v1/images/generations", new StringContent("{\"prompt\":\"x\"}", Encoding.UTF8, "text/plain"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, r.StatusCode);
        r = await app.Client.PostAsync("/v1/images/generations", new StringContent("{\"prompt\":\"" + new string('a', ServerApp.MaxBodyBytes) + "\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode);
        Assert.Equal("body_too_large", (await Api.ReadJson(r)).GetProperty("error").GetProperty("code").GetString());
    }

    [Fact]
    public async Task ConcurrentCompatibleRequestsAreBatchedAndEachEqualsItsRunAlone()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxBatch = 4 });
        var a = Api.Small("a castle on a hill", 1234);
        var b = Api.Small("a bowl of ramen", 98765);
        b["style"] = "Cinematic";
        var other = Api.Small("a different size", 7);
        other["width"] = 128; // incompatible: runs in its own batch

        string ida, idb, ido;
        using (app.Queue.Hold())
        {
            ida = (await Api.ReadJson(await Api.Post(app.Client, a, "?async=true"))).GetProperty("id").GetString()!;
            ido = (await Api.ReadJson(await Api.Post(app.Client, other, "?async=true"))).GetProperty("id").GetString()!;
            idb = (await Api.ReadJson(await Api.Post(app.Client, b, "?async=true"))).GetProperty("id").GetString()!;
            var queued = await Api.ReadJson(await app.Client.GetAsync($"/v1/jobs/{idb}"));
            Assert.Equal("queued", queued.GetProperty("status").GetString());
            Assert.Equal(3, queued.GetProperty("queue_position").GetInt32());
        }
        var ja = await Api.WaitJob(app.Client, ida);
        var jb = await Api.WaitJob(app.Client, idb);
        var jo = await Api.WaitJob(app.Client, ido);
        Assert.Equal("succeeded", ja.GetProperty("status").GetString());
        Assert.Equal(2, ja.GetProperty("batch_size").GetInt32());
        Assert.Equal(2, jb.GetProperty("batch_size").GetInt32());
        Assert.Equal(1, jo.GetProperty("batch_size").GetInt32());
        Assert.Equal(2, app.Queue.Batches);

        // Alone, through the server (batch of one) and through the CLI writer: the same bytes.
        var aloneA = await Api.ReadJson(await Api.Post(app.Client, a));
        var aloneB = await Api.ReadJson(await Api.Post(app.Client, b));
        Assert.Equal(1, aloneA.GetProperty("batch_size").GetInt32());
        Assert.Equal(Api.FirstPng(aloneA), Api.FirstPng(ja.GetProperty("result")));
        Assert.Equal(Api.FirstPng(aloneB), Api.FirstPng(jb.GetProperty("result")));
        Assert.Equal(CliPng(SmallSettings("a castle on a hill", 1234)), Api.FirstPng(ja.GetProperty("result")));
        Assert.Equal(CliPng(SmallSettings("a bowl of ramen", 98765) with { Style = "Cinematic" }), Api.FirstPng(jb.GetProperty("result")));
        Assert.NotEqual(Api.FirstPng(ja.GetProperty("result")), Api.FirstPng(jb.GetProperty("result")));
    }

    [Fact]
    public async Task GuidedBatchesUpToMaxBatchMatchTheirRunsAloneAndMultiImageRequestsRunAlone()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxBatch = 2 });
        // Classifier-free guidance with a different negative prompt (and style) per request.
        var a = Api.Small("red", 11); a["guidance"] = 2.5; a["negative_prompt"] = "green";
        var b = Api.Small("blue", 12); b["guidance"] = 2.5; b["style"] = "Pixel art";
        var c = Api.Small("cyan", 13); c["guidance"] = 2.5; // beyond max-batch: a second batch
        var d = Api.Small("two magenta", 14); d["guidance"] = 2.5; d["n"] = 2; // several images: runs alone
        var e = Api.Small("two yellow", 15); e["guidance"] = 2.5; e["n"] = 2;
        var bodies = new[] { a, b, c, d, e };
        var ids = new List<string>();
        using (app.Queue.Hold())
            foreach (var body in bodies)
                ids.Add((await Api.ReadJson(await Api.Post(app.Client, body, "?async=true"))).GetProperty("id").GetString()!);
        var jobs = new List<JsonElement>();
        foreach (var id in ids) jobs.Add(await Api.WaitJob(app.Client, id));
        Assert.Equal([2, 2, 1, 1, 1], jobs.Select(j => j.GetProperty("batch_size").GetInt32()));
        foreach (var (body, job) in bodies.Zip(jobs))
        {
            var alone = await Api.ReadJson(await Api.Post(app.Client, body));
            Assert.Equal(1, alone.GetProperty("batch_size").GetInt32());
            int n = alone.GetProperty("data").GetArrayLength();
            for (int k = 0; k < n; k++)
                Assert.Equal(alone.GetProperty("data")[k].GetProperty("b64_json").GetString(),
                    job.GetProperty("result").GetProperty("data")[k].GetProperty("b64_json").GetString());
        }
    }

    [Fact]
    public async Task AFullQueueAnswers429WithRetryAfter()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxQueue = 2 });
        using (app.Queue.Hold())
        {
            Assert.Equal(HttpStatusCode.Accepted, (await Api.Post(app.Client, Api.Small("one", 1), "?async=true")).StatusCode);
            Assert.Equal(HttpStatusCode.Accepted, (await Api.Post(app.Client, Api.Small("two", 2), "?async=true")).StatusCode);
            var r = await Api.Post(app.Client, Api.Small("three", 3));
            Assert.Equal(HttpStatusCode.TooManyRequests, r.StatusCode);
            Assert.True(r.Headers.RetryAfter?.Delta is { TotalSeconds: >= 1 }, "Retry-After in seconds");
            var error = (await Api.ReadJson(r)).GetProperty("error");
            Assert.Equal("rate_limit_error", error.GetProperty("type").GetString());
            Assert.Equal("queue_full", error.GetProperty("code").GetString());
            output.WriteLine($"429 Retry-After: {r.Headers.RetryAfter}; {error.GetProperty("message").GetString()}");
        }
        // Once the queue drains, requests are accepted again.
        while (app.Queue.Pending > 0) await Task.Delay(10);
        Assert.Equal(HttpStatusCode.OK, (await Api.Post(app.Client, Api.Small("four", 4))).StatusCode);
        Assert.Equal(1, app.Queue.Rejected);
    }

    [Fact]
    public async Task DeleteCancelsAQueuedJobAndARunningOne()
    {
        await using var app = await TestApp.StartAsync(fx);
        string queuedId;
        using (app.Queue.Hold())
        {
            queuedId = (await Api.ReadJson(await Api.Post(app.Client, Api.Small("queued", 1), "?async=true"))).GetProperty("id").GetString()!;
            var del = await app.Client.DeleteAsync($"/v1/jobs/{queuedId}");
            Assert.Equal(HttpStatusCode.OK, del.StatusCode);
            Assert.Equal("cancelled", (await Api.ReadJson(del)).GetProperty("status").GetString());
            Assert.Equal(0, app.Queue.Pending);
        }
        // Cancelling again is harmless; a finished job cannot be cancelled.
        Assert.Equal(HttpStatusCode.OK, (await app.Client.DeleteAsync($"/v1/jobs/{queuedId}")).StatusCode);
        var done = await Api.ReadJson(await Api.Post(app.Client, Api.Small("done", 5)));
        var conflict = await app.Client.DeleteAsync($"/v1/jobs/{done.GetProperty("id").GetString()}");
        Assert.Equal(HttpStatusCode.Conflict, conflict.StatusCode);
        Assert.Equal("already_finished", (await Api.ReadJson(conflict)).GetProperty("error").GetProperty("code").GetString());

        // A running job: the worker waits before its batch until the DELETE has gone through.
        using var started = new SemaphoreSlim(0);
        using var go = new SemaphoreSlim(0);
        app.Queue.BeforeBatch = _ => { started.Release(); go.Wait(); };
        string runningId = (await Api.ReadJson(await Api.Post(app.Client, Api.Small("running", 2, steps: 8), "?async=true"))).GetProperty("id").GetString()!;
        Assert.True(await started.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal("running", (await Api.ReadJson(await app.Client.GetAsync($"/v1/jobs/{runningId}"))).GetProperty("status").GetString());
        Assert.Equal(HttpStatusCode.OK, (await app.Client.DeleteAsync($"/v1/jobs/{runningId}")).StatusCode);
        go.Release();
        var job = await Api.WaitJob(app.Client, runningId);
        Assert.Equal("cancelled", job.GetProperty("status").GetString());
        Assert.Equal("cancelled", job.GetProperty("error").GetProperty("code").GetString());
        app.Queue.BeforeBatch = null;

        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.DeleteAsync("/v1/jobs/job_nope")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync("/v1/jobs/job_nope")).StatusCode);
        // The worker is still serving.
        Assert.Equal(HttpStatusCode.OK, (await Api.Post(app.Client, Api.Small("after", 3))).StatusCode);
    }

    [Fact]
    public async Task AFailingRequestFailsAloneAndTheServerGoesOn()
    {
        await using var app = await TestApp.StartAsync(fx);
        app.Queue.BeforeBatch = jobs =>
        {
            if (jobs.Any(j => j.Settings.Prompts[0] == "boom")) throw new InvalidOperationException("simulated native failure");
        };
        string good, bad;
        using (app.Queue.Hold())
        {
            good = (await Api.ReadJson(await Api.Post(app.Client, Api.Small("fine", 1), "?async=true"))).GetProperty("id").GetString()!;
            bad = (await Api.ReadJson(await Api.Post(app.Client, Api.Small("boom", 2), "?async=true"))).GetProperty("id").GetString()!;
        }
        Assert.Equal("succeeded", (await Api.WaitJob(app.Client, good)).GetProperty("status").GetString());
        var failed = await Api.WaitJob(app.Client, bad);
        Assert.Equal("failed", failed.GetProperty("status").GetString());
        Assert.Contains("simulated native failure", failed.GetProperty("error").GetProperty("message").GetString());

        var sync = await Api.Post(app.Client, Api.Small("boom", 3));
        Assert.Equal(HttpStatusCode.InternalServerError, sync.StatusCode);
        Assert.Equal("generation_failed", (await Api.ReadJson(sync)).GetProperty("error").GetProperty("code").GetString());
        Assert.Equal(HttpStatusCode.OK, (await Api.Post(app.Client, Api.Small("still fine", 4))).StatusCode);
    }

    [Fact]
    public async Task StreamingAnswersProgressEventsThenTheResult()
    {
        await using var app = await TestApp.StartAsync(fx);
        var r = await Api.Post(app.Client, Api.Small("a lantern", 9, steps: 3), "?stream=true");
        Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
        string text = await r.Content.ReadAsStringAsync();
        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
            .Select(block => (Name: block.Split('\n')[0]["event: ".Length..], Data: JsonDocument.Parse(block.Split('\n')[1]["data: ".Length..]).RootElement.Clone()))
            .ToList();
        var steps = events.Where(e => e.Name == "progress" && e.Data.GetProperty("status").GetString() == "running")
            .Select(e => e.Data.GetProperty("step").GetInt32()).Distinct().ToList();
        // The stream sends the job's latest state whenever it changes, so a loaded machine may skip steps (or, when
        // the whole run fits between two sends, every running state): what is sent is in order and in range.
        Assert.Contains(events, e => e.Name == "progress");
        Assert.Equal(steps.Order(), steps);
        Assert.All(steps, s => Assert.InRange(s, 0, 3));
        Assert.All(events.Where(e => e.Name == "progress"), e => Assert.Equal(3, e.Data.GetProperty("total_steps").GetInt32()));
        Assert.Equal("result", events[^1].Name);
        Assert.Equal(Api.FirstPng(events[^1].Data), CliPng(SmallSettings("a lantern", 9, steps: 3)));
        Assert.Equal(r.Headers.GetValues("X-Job-Id").Single(), events[^1].Data.GetProperty("id").GetString());

        // The job's own event stream, after the fact: its final state and result.
        string id = events[^1].Data.GetProperty("id").GetString()!;
        string again = await app.Client.GetStringAsync($"/v1/jobs/{id}/events");
        Assert.Contains("event: result", again);
        output.WriteLine($"{events.Count} events; running steps seen: {string.Join(",", steps)}");
    }

    [Fact]
    public async Task BearerTokenGuardsTheApi()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { Token = "s3cret-token" });
        var r = await app.Client.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
        Assert.Equal("Bearer", r.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Equal("authentication_error", (await Api.ReadJson(r)).GetProperty("error").GetProperty("type").GetString());
        Api.Bearer(app.Client, "wrong-token");
        Assert.Equal(HttpStatusCode.Unauthorized, (await Api.Post(app.Client, Api.Small("x", 1))).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await app.Client.GetAsync("/v1/jobs/job_x")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await app.Client.DeleteAsync("/v1/jobs/job_x")).StatusCode);
        Assert.Equal(0, app.Queue.Batches);
        Api.Bearer(app.Client, "s3cret-token");
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/v1/models")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await Api.Post(app.Client, Api.Small("x", 1))).StatusCode);
        // The page and health need no token (they reveal nothing and start nothing).
        Api.Bearer(app.Client, null);
        var health = await Api.ReadJson(await app.Client.GetAsync("/health"));
        Assert.True(health.GetProperty("auth_required").GetBoolean());
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/")).StatusCode);
    }

    [Fact]
    public async Task HealthModelsOpenApiAndPageAreServed()
    {
        await using var app = await TestApp.StartAsync(fx, new ServeOptions { MaxQueue = 5, MaxBatch = 3 });
        var health = await Api.ReadJson(await app.Client.GetAsync("/health"));
        Assert.Equal("ok", health.GetProperty("status").GetString());
        Assert.Equal(5, health.GetProperty("queue").GetProperty("max_queue").GetInt32());
        Assert.False(health.GetProperty("auth_required").GetBoolean());
        // Which device and libtorch serve: the version, never a local path.
        var runtime = health.GetProperty("runtime");
        Assert.Equal("cpu", runtime.GetProperty("device").GetString()!.ToLowerInvariant());
        Assert.StartsWith("2.", runtime.GetProperty("libtorch").GetString());
        Assert.DoesNotContain("/", runtime.GetRawText());

        var model = (await Api.ReadJson(await app.Client.GetAsync("/v1/models"))).GetProperty("data")[0];
        Assert.Equal("tiny-pixart-lcm", model.GetProperty("id").GetString());
        Assert.Equal(1024, model.GetProperty("default_width").GetInt32());
        Assert.Equal(4, model.GetProperty("default_steps").GetInt32());
        Assert.Equal("lcm", model.GetProperty("scheduler").GetString());
        Assert.Equal(StylePresets.All.Select(s => s.Name), model.GetProperty("styles").EnumerateArray().Select(s => s.GetString()));
        Assert.Equal(AspectRatioBins.AspectRatio1024Bin.Count, model.GetProperty("aspect_ratios").GetArrayLength());

        var openapi = await Api.ReadJson(await app.Client.GetAsync("/openapi.json"));
        Assert.StartsWith("3.", openapi.GetProperty("openapi").GetString());
        foreach (var path in new[] { "/v1/images/generations", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/models", "/health" })
            Assert.True(openapi.GetProperty("paths").TryGetProperty(path, out _), path);
        // The document's style list is the library's.
        Assert.Equal(StylePresets.All.Select(s => s.Name),
            openapi.GetProperty("components").GetProperty("schemas").GetProperty("ImagesRequest").GetProperty("properties").GetProperty("style").GetProperty("enum").EnumerateArray().Select(s => s.GetString()));

        var page = await app.Client.GetAsync("/");
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        string html = await page.Content.ReadAsStringAsync();
        Assert.Contains("<script src=\"/app.js\"", html);
        Assert.DoesNotContain("http", html.Replace("http-equiv", "")); // no CDN: nothing absolute
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/app.js")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/app.css")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync("/etc/passwd")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync("/../README.md")).StatusCode);
    }

    [Fact]
    public async Task OnlyLoopbackHostNamesAreAnsweredWhenBoundToLoopback()
    {
        await using var app = await TestApp.StartAsync(fx);
        using var req = new HttpRequestMessage(HttpMethod.Get, "/health");
        req.Headers.Host = "attacker.example";
        var r = await app.Client.SendAsync(req);
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Equal("bad_host", (await Api.ReadJson(r)).GetProperty("error").GetProperty("code").GetString());
    }
}
