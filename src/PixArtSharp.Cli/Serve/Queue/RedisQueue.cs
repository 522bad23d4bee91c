using System.Globalization;
using System.Net;
using System.Text.Json;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using StackExchange.Redis;

namespace PixArtSharp.Cli.Serve.Queue;

/// <summary>
/// Where the queue lives: <c>redis://[[user]:password@]HOST[:PORT][/DB]</c>, and how to connect to it so that
/// nothing waits on a Redis that is down: commands fail at once while disconnected (no backlog), time out after
/// two seconds otherwise, and the connection keeps retrying in the background.
/// </summary>
public sealed record RedisQueueAddress(string Host, int Port, int Database, string? User, string? Password)
{
    public static RedisQueueAddress Parse(string url, string option = "--queue")
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme != "redis" || string.IsNullOrEmpty(uri.Host))
            throw new ArgumentException($"{option} must look like redis://HOST:PORT[/DB] (for example redis://127.0.0.1:6379/0), got '{url}'.", option);
        int db = 0;
        string path = uri.AbsolutePath.Trim('/');
        if (path.Length > 0 && (!int.TryParse(path, NumberStyles.None, CultureInfo.InvariantCulture, out db) || db > 15))
            throw new ArgumentException($"{option}: the database after the port must be a number from 0 to 15, got '/{path}'.", option);
        string? user = null, password = null;
        if (uri.UserInfo.Length > 0)
        {
            var parts = uri.UserInfo.Split(':', 2);
            user = parts[0].Length > 0 ? Uri.UnescapeDataString(parts[0]) : null;
            password = parts.Length > 1 ? Uri.UnescapeDataString(parts[1]) : null;
        }
        return new RedisQueueAddress(uri.Host.Trim('[', ']'), uri.IsDefaultPort || uri.Port < 0 ? 6379 : uri.Port, db, user, password);
    }

    /// <summary>The address without the password, for logs and errors.</summary>
    public override string ToString() => $"redis://{(Host.Contains(':') ? $"[{Host}]" : Host)}:{Port}/{Database}";

    public ConfigurationOptions Options(string clientName)
    {
        var o = new ConfigurationOptions
        {
            AbortOnConnectFail = false,        // start even when Redis is down; reconnect in the background
            BacklogPolicy = BacklogPolicy.FailFast, // while disconnected a command throws at once: the front answers 503
            ConnectTimeout = 2000,
            SyncTimeout = 2000,
            AsyncTimeout = 2000,
            ConnectRetry = 1,
            ReconnectRetryPolicy = new ExponentialRetry(250, 5000), // backoff 0.25 s … 5 s
            DefaultDatabase = Database,
            ClientName = clientName,
            User = User,
            Password = Password,
        };
        o.EndPoints.Add(IPAddress.TryParse(Host, out var ip) ? new IPEndPoint(ip, Port) : new DnsEndPoint(Host, Port));
        return o;
    }

    public ConnectionMultiplexer Connect(string clientName) => ConnectionMultiplexer.Connect(Options(clientName));
}

/// <summary>
/// The Redis layout shared by fronts and workers. Per model M (its label, as in answers):
/// <list type="bullet">
/// <item><c>pixart:{M}:jobs</c> — a stream, one entry per job (field <c>id</c>); consumer group <c>pixart-workers</c>.
/// An entry is acknowledged and deleted once its job's result (or failure) is stored.</item>
/// <item><c>pixart:job:{id}</c> — a hash: the job's settings, source image, status, progress, result or error,
/// attempts and worker. It expires <see cref="QueuedTtl"/> after submission, and the result TTL after it ends.</item>
/// <item>channels <c>pixart:events</c> (a job changed: its id), <c>pixart:cancel</c> (cancel this id),
/// <c>pixart:{M}:wake</c> (a job was queued for M).</item>
/// </list>
/// </summary>
public static class RedisKeys
{
    public const string Group = "pixart-workers";
    public static RedisKey Stream(string model) => $"pixart:{model}:jobs";
    public static RedisKey Job(string id) => $"pixart:job:{id}";
    public static RedisChannel Wake(string model) => RedisChannel.Literal($"pixart:{model}:wake");
    public static readonly RedisChannel Events = RedisChannel.Literal("pixart:events");
    public static readonly RedisChannel Cancel = RedisChannel.Literal("pixart:cancel");
    /// <summary>A queued job's hash lives this long if no worker ever takes it.</summary>
    public static readonly TimeSpan QueuedTtl = TimeSpan.FromDays(1);

    /// <summary>Job ids as <see cref="Serve.Job.NewId"/> makes them: anything else is never looked up.</summary>
    public static bool IsJobId(string id) =>
        id.Length == 24 && id.StartsWith("job_", StringComparison.Ordinal) && id.AsSpan(4).IndexOfAnyExcept(LowerHex) < 0;

    private static readonly System.Buffers.SearchValues<char> LowerHex = System.Buffers.SearchValues.Create("0123456789abcdef");

    public static bool IsFinal(string? status) => status is "succeeded" or "failed" or "cancelled";

    /// <summary>
    /// Stores a job's end (status, result or error) unless it already ended: the first result wins, so a job run
    /// twice (its first worker was presumed dead) answers once. Drops the source image and sets the result TTL.
    /// KEYS[1] job hash; ARGV status, phase, result, error, ttl seconds, worker. Returns 1 stored, 0 already final,
    /// -1 the job is gone (expired).
    /// </summary>
    public static readonly LuaScript Finish = LuaScript.Prepare("""
        local s = redis.call('HGET', @key, 'status')
        if not s then return -1 end
        if s == 'succeeded' or s == 'failed' or s == 'cancelled' then return 0 end
        redis.call('HSET', @key, 'status', @status, 'phase', @phase, 'result', @result, 'error', @error, 'worker', @worker)
        redis.call('HDEL', @key, 'source')
        redis.call('EXPIRE', @key, @ttl)
        return 1
        """);

    /// <summary>A worker's progress on a job that has not ended (a late step never overwrites a cancellation).</summary>
    public static readonly LuaScript Progress = LuaScript.Prepare("""
        local s = redis.call('HGET', @key, 'status')
        if (not s) or s == 'succeeded' or s == 'failed' or s == 'cancelled' then return 0 end
        redis.call('HSET', @key, 'status', 'running', 'phase', @phase, 'step', @step, 'total_steps', @total, 'batch_size', @batch, 'worker', @worker)
        return 1
        """);

    /// <summary>
    /// Marks a job for cancellation; a queued one ends as cancelled at once (no worker will run it), a running one
    /// is stopped by its worker (told on <see cref="Cancel"/>). Returns 1 cancelled now, 0 left to the worker,
    /// -1 gone, 2 already ended.
    /// </summary>
    public static readonly LuaScript CancelJob = LuaScript.Prepare("""
        local s = redis.call('HGET', @key, 'status')
        if not s then return -1 end
        if s == 'succeeded' or s == 'failed' or s == 'cancelled' then return 2 end
        redis.call('HSET', @key, 'cancel', '1')
        if s == 'queued' then
          redis.call('HSET', @key, 'status', 'cancelled', 'phase', 'cancelled', 'error', @error)
          redis.call('HDEL', @key, 'source')
          redis.call('EXPIRE', @key, @ttl)
          return 1
        end
        return 0
        """);

    /// <summary>An error as stored in a job hash: the HTTP status with the OpenAI-like error body.</summary>
    public sealed record StoredError(int Status, ErrorDetail Error)
    {
        public ApiException ToException() => new(Status, Error.Message, Error.Param, Error.Code);
        public static string Of(ApiException e) => JsonSerializer.Serialize(new StoredError(e.Status, e.Body.Error), ServerApp.Json);
        public static ApiException Parse(string? json) =>
            (json is { Length: > 0 } ? JsonSerializer.Deserialize<StoredError>(json, ServerApp.Json) : null)?.ToException()
            ?? new ApiException(500, "The job ended without a result.", code: "generation_failed");
    }

    /// <summary>The source image of an image-to-image job: "WxH" then the HWC bytes.</summary>
    public static byte[] PackSource(RgbImage image)
    {
        byte[] head = System.Text.Encoding.ASCII.GetBytes($"{image.Width}x{image.Height}\n");
        return [.. head, .. image.Pixels];
    }

    public static RgbImage UnpackSource(byte[] packed)
    {
        int nl = Array.IndexOf(packed, (byte)'\n');
        var dims = System.Text.Encoding.ASCII.GetString(packed, 0, nl).Split('x');
        return new RgbImage(int.Parse(dims[0], CultureInfo.InvariantCulture), int.Parse(dims[1], CultureInfo.InvariantCulture), packed[(nl + 1)..]);
    }

    public static GenerationSettings Settings(string json) => GenerationSettings.FromJson(json);
}
