using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PixArtSharp.Pipeline;
using PixArtSharp.Schedulers;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// The HTTP side of <c>pixart serve</c> (ASP.NET Core minimal APIs): the OpenAI-like images API, job status and
/// progress (server-sent events), cancellation, health, models, the OpenAPI document and the embedded web page.
/// Requests only ever reach the <see cref="GenerationQueue"/>; nothing in a request names a file.
/// </summary>
public static class ServerApp
{
    /// <summary>
    /// Largest accepted request body: room for an image-to-image source of about 12 MB as base64 (a phone photo);
    /// prompts are bounded far below it by their own limit.
    /// </summary>
    public const int MaxBodyBytes = 16 << 20;

    internal static readonly JsonSerializerOptions Json = new(GenerationSettings.JsonOptions);

    /// <summary>
    /// Builds the app around a running queue. <paramref name="configure"/> lets tests swap in TestServer; otherwise
    /// Kestrel listens on options.Host:options.Port.
    /// </summary>
    public static WebApplication Build(ServeOptions options, IJobQueue queue, Action<WebApplicationBuilder>? configure = null)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = "pixart-serve",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = MaxBodyBytes;
            k.AddServerHeader = false;
        });
        builder.WebHost.UseUrls(UrlFor(options.Host, options.Port));
        builder.Services.AddSingleton(queue);
        configure?.Invoke(builder);

        var app = builder.Build();
        bool loopback = IsLoopback(options.Host);
        byte[]? tokenHash = options.Token is null ? null : SHA256.HashData(Encoding.UTF8.GetBytes(options.Token));

        // Errors, security headers, Host check and bearer auth, before any endpoint.
        app.Use(async (ctx, next) =>
        {
            var h = ctx.Response.Headers;
            h["X-Content-Type-Options"] = "nosniff";
            h["Referrer-Policy"] = "no-referrer";
            h["X-Frame-Options"] = "DENY";
            try
            {
                // Bound to loopback, only loopback names are valid hosts: a DNS-rebinding page cannot reach us.
                if (loopback && !IsLoopbackHostHeader(ctx.Request.Host.Host))
                    throw new ApiException(400, $"Host '{ctx.Request.Host.Host}' is not allowed; this server answers to localhost only.", code: "bad_host");
                if (tokenHash is not null && ctx.Request.Path.StartsWithSegments("/v1") && !Authorized(ctx.Request, tokenHash))
                {
                    h.WWWAuthenticate = "Bearer";
                    throw new ApiException(401, "This server needs an API token: send 'Authorization: Bearer <token>' (the --token it was started with).", code: "unauthorized");
                }
                await next(ctx);
            }
            catch (ApiException e) when (!ctx.Response.HasStarted)
            {
                await WriteError(ctx, e);
            }
            catch (BadHttpRequestException e) when (!ctx.Response.HasStarted)
            {
                await WriteError(ctx, new ApiException(e.StatusCode, e.StatusCode == 413
                    ? $"The request body is larger than {MaxBodyBytes} bytes." : "Bad request: " + e.Message));
            }
            catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
            {
                // The client went away; its job (if any) was cancelled by the handler.
            }
            catch (Exception e) when (!ctx.Response.HasStarted)
            {
                app.Logger.LogError(e, "Unhandled error on {Path}", ctx.Request.Path);
                await WriteError(ctx, new ApiException(500, "Internal error: " + ServeSafety.ScrubPaths(e.Message), code: "internal_error"));
            }
        });

        MapPage(app);
        // Which device and libtorch serve (fixed for the server's life; the version, never the library's local path).
        var runtime = new { device = queue.Pipeline.Device.ToString(), libtorch = TorchRuntime.GetInfo().LibTorchVersion, cuda_devices = TorchRuntime.CudaDeviceCount };
        app.MapGet("/health", () => Results.Json(new
        {
            status = queue.Unavailable is null ? "ok" : "unavailable",
            problem = queue.Unavailable,
            model = queue.ModelLabel,
            queue = new { pending = queue.Pending, running = queue.Running, max_queue = queue.MaxQueue, max_batch = queue.MaxBatch },
            auth_required = tokenHash is not null,
            runtime,
            prompt_cache = new { entries = queue.Pipeline.PromptCache?.Count ?? 0, capacity = queue.Pipeline.Options.PromptCacheEntries, hits = queue.Pipeline.PromptCacheHits, misses = queue.Pipeline.PromptCacheMisses },
        }, Json, statusCode: queue.Unavailable is null ? 200 : 503));
        var models = ModelsList(queue); // fixed for the server's life: the model and its defaults never change
        app.MapGet("/v1/models", () => Results.Json(models, Json));
        app.MapPost("/v1/images/generations", (HttpContext ctx) => Generate(ctx, queue));
        ImageEdits.Map(app, queue);
        app.MapGet("/v1/jobs/{id}", async (HttpContext ctx, string id) =>
        {
            ctx.Response.Headers.CacheControl = "no-store"; // may carry the images: never cached by a proxy
            return Results.Json(queue.Info(await FindJob(queue, id)), Json);
        });
        app.MapGet("/v1/jobs/{id}/events", async (HttpContext ctx, string id) => await StreamEvents(ctx, queue, await FindJob(queue, id), cancelOnDisconnect: false));
        app.MapDelete("/v1/jobs/{id}", async (string id) =>
        {
            var job = await FindJob(queue, id);
            if (!job.Cancel() && job.Status != JobStatus.Cancelled)
                throw new ApiException(409, $"Job {id} already finished ({job.Status.ToString().ToLowerInvariant()}); there is nothing to cancel.", "id", "already_finished");
            return Results.Json(queue.Info(job), Json);
        });
        app.MapFallback((HttpContext ctx) => throw new ApiException(404, $"No endpoint {ctx.Request.Method} {ctx.Request.Path}. See /openapi.json.", code: "not_found"));
        return app;
    }

    public static string UrlFor(string host, int port) =>
        $"http://{(IPAddress.TryParse(host, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{host}]" : host)}:{port}";

    public static bool IsLoopback(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    private static bool IsLoopbackHostHeader(string host) => host.Length == 0 || IsLoopback(host);

    private static bool Authorized(HttpRequest request, byte[] tokenHash)
    {
        string? header = request.Headers.Authorization;
        if (header is null || !header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return false;
        // Compare hashes in constant time: the token's length and prefix do not leak through timing.
        var given = SHA256.HashData(Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim()));
        return CryptographicOperations.FixedTimeEquals(given, tokenHash);
    }

    private static async Task<Job> FindJob(IJobQueue queue, string id) =>
        await queue.FindAsync(id) ?? throw new ApiException(404, $"No job '{id}' (finished jobs are kept for the last {queue.KeepFinished} requests).", "id", "job_not_found");

    internal static Task WriteError(HttpContext ctx, ApiException e)
    {
        ctx.Response.StatusCode = e.Status;
        if (e.Status == 429) ctx.Response.Headers.RetryAfter = e.Code == "queue_full" && ctx.RequestServices.GetService<IJobQueue>() is { } q
            ? q.RetryAfterSeconds().ToString(System.Globalization.CultureInfo.InvariantCulture) : "1";
        // The job queue (Redis) is unreachable: come back shortly, the front does not wait on it.
        if (e.Status == 503 && e.Code == "queue_unavailable") ctx.Response.Headers.RetryAfter = Queue.RedisJobQueue.RetryAfterUnavailableSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return ctx.Response.WriteAsJsonAsync(e.Body, Json);
    }

    private static object ModelsList(IJobQueue queue)
    {
        var p = queue.Pipeline;
        var bins = p.AspectRatioBins;
        return new
        {
            @object = "list",
            data = new[]
            {
                new
                {
                    id = queue.ModelLabel,
                    @object = "model",
                    owned_by = "local",
                    default_width = p.DefaultWidth,
                    default_height = p.DefaultHeight,
                    default_steps = p.DefaultSteps,
                    default_guidance = p.DefaultGuidance,
                    scheduler = GenerationSettings.SchedulerName(p.Scheduler.ClassName),
                    schedulers = SchedulerFactory.Names,
                    // Each sampler's own defaults on this model (LCM 4 / 0, DPM-Solver++ 20 / 4.5, SA-Solver 25 / 3).
                    scheduler_defaults = SchedulerFactory.Names.ToDictionary(n => n, n =>
                    {
                        using var sch = p.CreateScheduler(n);
                        return new { steps = sch.DefaultSteps, guidance = sch.DefaultGuidance };
                    }),
                    styles = StylePresets.All.Select(s => s.Name),
                    aspect_ratios = bins.Select(b => new { ratio = b.Ratio, width = (int)b.Width, height = (int)b.Height }),
                    limits = new
                    {
                        max_side = GenerationLimits.Server.MaxSide,
                        max_steps = GenerationLimits.Server.MaxSteps,
                        max_images = GenerationLimits.Server.MaxImages,
                        max_prompt_chars = GenerationLimits.Server.MaxPromptChars,
                        max_guidance = GenerationLimits.Server.MaxGuidance,
                    },
                },
            },
        };
    }

    /// <summary>
    /// POST /v1/images/generations. Default: waits and answers the images (a disconnect cancels the job).
    /// <c>?stream=true</c>: answers server-sent events (progress, then the result) on this connection.
    /// <c>?async=true</c>: answers 202 with the job at once; poll GET /v1/jobs/{id} or follow its events.
    /// </summary>
    private static async Task Generate(HttpContext ctx, IJobQueue queue)
    {
        // The answer holds the images (and errors): a shared cache must never keep or replay them.
        ctx.Response.Headers.CacheControl = "no-store";
        var mediaType = ctx.Request.ContentType?.Split(';')[0].Trim();
        // Only application/json: a cross-site form post cannot send it without a CORS preflight we never grant.
        if (!string.Equals(mediaType, "application/json", StringComparison.OrdinalIgnoreCase))
            throw new ApiException(415, "Send the request as JSON with 'Content-Type: application/json'.", code: "unsupported_media_type");
        byte[] body = await ReadBody(ctx.Request);
        var request = ImagesRequest.Parse(body);
        var settings = request.ToSettings(GenerationLimits.Server);
        ImageUpload? upload = null;
        if (request.Image is not null)
            (settings, upload) = ImageUpload.Apply(request.Image, request.ResizeToFit ?? false, settings, queue.Pipeline);
        try { settings = settings.Resolve(queue.Pipeline); }
        catch (ArgumentException e) { throw ImagesRequest.BadSetting(e, request); }
        var job = await queue.SubmitAsync(settings, upload?.Image);
        ctx.Response.Headers["X-Job-Id"] = job.Id;

        if (Flag(ctx.Request, "async"))
        {
            ctx.Response.StatusCode = 202;
            ctx.Response.Headers.Location = $"/v1/jobs/{job.Id}";
            await ctx.Response.WriteAsJsonAsync(queue.Info(job), Json);
            return;
        }
        if (Flag(ctx.Request, "stream"))
        {
            await StreamEvents(ctx, queue, job, cancelOnDisconnect: true, request.Encode);
            return;
        }
        await AnswerWhenFinished(ctx, job, request);
    }

    /// <summary>
    /// Waits for the job and answers with its images in the request's format, or its error. A client that
    /// disconnects first cancels the job (its work stops). Shared by generations and edits.
    /// </summary>
    internal static async Task AnswerWhenFinished(HttpContext ctx, Job job, ImagesRequest request)
    {
        try
        {
            await job.Finished.WaitAsync(ctx.RequestAborted);
        }
        catch (OperationCanceledException)
        {
            job.Cancel(); // the client disconnected: stop its work
            throw;
        }
        if (job.Result is { } result)
        {
            ctx.Response.Headers["X-Batch-Size"] = result.BatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await ctx.Response.WriteAsJsonAsync(request.Encode(result), Json);
        }
        else
            await WriteError(ctx, job.Error ?? new ApiException(500, "The job ended without a result."));
    }

    private static bool Flag(HttpRequest r, string name) =>
        r.Query.TryGetValue(name, out var v) && (v.ToString() is "" or "1" or "true" or "True");

    private static async Task<byte[]> ReadBody(HttpRequest request)
    {
        if (request.ContentLength > MaxBodyBytes)
            throw new ApiException(413, $"The request body is larger than {MaxBodyBytes} bytes.", code: "body_too_large");
        using var ms = new MemoryStream();
        var buffer = new byte[8192];
        int read;
        while ((read = await request.Body.ReadAsync(buffer, request.HttpContext.RequestAborted)) > 0)
        {
            if (ms.Length + read > MaxBodyBytes)
                throw new ApiException(413, $"The request body is larger than {MaxBodyBytes} bytes.", code: "body_too_large");
            ms.Write(buffer, 0, read);
        }
        return ms.ToArray();
    }

    /// <summary>
    /// Server-sent events for a job: "progress" (the job's status, step k/N, queue position) on every change and
    /// every second while queued, then one "result" (the images answer) or "error" event, then the stream ends.
    /// </summary>
    /// <param name="encode">The request's output_format (its own stream); null: the job's PNGs (GET /v1/jobs/{id}/events).</param>
    private static async Task StreamEvents(HttpContext ctx, IJobQueue queue, Job job, bool cancelOnDisconnect, Func<ImagesResponse, ImagesResponse>? encode = null)
    {
        var ct = ctx.RequestAborted;
        ctx.Response.ContentType = "text/event-stream; charset=utf-8";
        ctx.Response.Headers.CacheControl = "no-cache, no-store";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        try
        {
            bool send = true;
            while (true)
            {
                int version = job.Version;
                var info = queue.Info(job) with { Result = null };
                if (send || job.IsFinished || job.Status == JobStatus.Queued) await WriteEvent(ctx, "progress", info, ct); // queued: position may move
                else await WriteComment(ctx, "keepalive", ct);
                send = true;
                if (job.IsFinished)
                {
                    if (job.Result is { } r) await WriteEvent(ctx, "result", encode is null ? r : encode(r), ct);
                    else await WriteEvent(ctx, "error", (job.Error ?? new ApiException(500, "The job ended without a result.")).Body, ct);
                    return;
                }
                try
                {
                    await job.WaitForChangeAsync(version, ct).WaitAsync(TimeSpan.FromSeconds(1), ct);
                }
                catch (TimeoutException)
                {
                    // Heartbeat: refreshes the queue position, and a write is how a gone client is noticed.
                    send = false;
                }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            if (cancelOnDisconnect) job.Cancel();
        }
        catch (IOException)
        {
            if (cancelOnDisconnect) job.Cancel();
        }
    }

    private static async Task WriteComment(HttpContext ctx, string text, CancellationToken ct)
    {
        await ctx.Response.WriteAsync($": {text}\n\n", ct);
        await ctx.Response.Body.FlushAsync(ct);
    }

    private static async Task WriteEvent<T>(HttpContext ctx, string name, T data, CancellationToken ct)
    {
        string json = JsonSerializer.Serialize(data, Json);
        await ctx.Response.WriteAsync($"event: {name}\ndata: {json}\n\n", ct);
        await ctx.Response.Body.FlushAsync(ct);
    }

    private static void MapPage(WebApplication app)
    {
        foreach (var (path, resource, type) in new[]
                 {
                     ("/", "index.html", "text/html; charset=utf-8"),
                     ("/app.js", "app.js", "text/javascript; charset=utf-8"),
                     ("/app.css", "app.css", "text/css; charset=utf-8"),
                     ("/openapi.json", "openapi.json", "application/json; charset=utf-8"),
                 })
        {
            byte[] bytes = ReadResource(resource);
            app.MapGet(path, (HttpContext ctx) =>
            {
                ctx.Response.Headers.CacheControl = "no-cache";
                // Everything the page needs comes from this server; it talks to no one else.
                ctx.Response.Headers.ContentSecurityPolicy =
                    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
                return Results.Bytes(bytes, type);
            });
        }
    }

    internal static byte[] ReadResource(string name)
    {
        using var s = typeof(ServerApp).Assembly.GetManifestResourceStream("wwwroot/" + name)
                      ?? throw new InvalidOperationException($"The embedded resource wwwroot/{name} is missing from the build.");
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }
}
