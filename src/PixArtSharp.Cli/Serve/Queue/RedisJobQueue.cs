using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using System.Threading.Channels;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using StackExchange.Redis;

namespace PixArtSharp.Cli.Serve.Queue;

/// <summary>
/// The front's queue for <c>pixart serve --queue redis://…</c>: a job is written to its model's stream, and a
/// local <see cref="Job"/> mirrors it — its progress, result or error read back from Redis (on each worker
/// notification, and every second in case one was missed) — so the endpoints, the events stream and the page work
/// as they do in process. The front loads no weights: its pipeline only resolves settings from the model's configs.
/// Nothing here waits on a Redis that is down: submitting and looking up jobs answer 503 at once (with
/// Retry-After), and mirrors pick up where they were once Redis is back.
/// </summary>
public sealed class RedisJobQueue : IJobQueue, IDisposable
{
    /// <summary>What a 503 "queue unavailable" asks clients to wait.</summary>
    public const int RetryAfterUnavailableSeconds = 2;

    private readonly ConnectionMultiplexer _redis;
    private readonly RedisQueueAddress _address;
    private readonly ConcurrentDictionary<string, Job> _mirrors = new();
    private readonly ConcurrentQueue<string> _finishedOrder = new();
    private readonly Channel<string> _changed = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _refresher;
    private int _pending, _running;
    private double _avgJobSeconds = 2;

    public string ModelLabel { get; }
    public PixArtPipeline Pipeline { get; }
    public int MaxQueue { get; }
    public int MaxBatch { get; }
    public int KeepFinished { get; }
    public int Pending => Volatile.Read(ref _pending);
    public int Running => Volatile.Read(ref _running);
    public string? Unavailable => _redis.IsConnected ? null : $"The job queue at {_address} is unreachable; retry in a few seconds.";

    public RedisJobQueue(RedisQueueAddress address, PixArtPipeline configs, string modelLabel, int maxQueue, int maxBatch, int keepFinished = 64)
    {
        _address = address;
        Pipeline = configs;
        ModelLabel = modelLabel;
        MaxQueue = maxQueue;
        MaxBatch = maxBatch;
        KeepFinished = keepFinished;
        _redis = address.Connect("pixart-front");
        // Pub/sub resubscribes by itself after a reconnect; the periodic refresh covers messages lost meanwhile.
        _redis.GetSubscriber().Subscribe(RedisKeys.Events, (_, id) =>
        {
            if (id.HasValue && _mirrors.ContainsKey(id!)) _changed.Writer.TryWrite(id!);
        });
        _refresher = Task.Run(RefreshLoop);
    }

    private IDatabase Db => _redis.GetDatabase();

    public async Task<Job> SubmitAsync(GenerationSettings resolved, RgbImage? source = null)
    {
        ThrowIfUnavailable();
        var job = new Job(resolved, source);
        var stream = RedisKeys.Stream(ModelLabel);
        var key = RedisKeys.Job(job.Id);
        await Guard(async () =>
        {
            long waiting = await Db.StreamLengthAsync(stream);
            if (waiting >= MaxQueue)
                throw new ApiException(429, $"The queue is full ({MaxQueue} requests waiting). Retry after {RetryAfterSeconds()} s.", code: "queue_full");
            var fields = new List<HashEntry>
            {
                new("model", ModelLabel),
                new("settings", resolved.ToJson()),
                new("status", "queued"),
                new("phase", "queued"),
                new("step", 0),
                new("total_steps", resolved.Steps ?? 0),
                new("created", job.Created.ToUnixTimeSeconds()),
                new("attempts", 0),
            };
            if (source is not null) fields.Add(new("source", RedisKeys.PackSource(source)));
            // One transaction: a job is in the stream only with its hash, and its hash never outlives a day unrun.
            var tx = Db.CreateTransaction();
            _ = tx.HashSetAsync(key, [.. fields]);
            _ = tx.KeyExpireAsync(key, RedisKeys.QueuedTtl);
            _ = tx.StreamAddAsync(stream, "id", job.Id);
            if (!await tx.ExecuteAsync()) throw new RedisException("the transaction was not applied");
            await Db.PublishAsync(RedisKeys.Wake(ModelLabel), job.Id, CommandFlags.FireAndForget);
            return 0;
        });
        Track(job);
        return job;
    }

    public async Task<Job?> FindAsync(string id)
    {
        if (_mirrors.TryGetValue(id, out var job)) return job;
        if (!RedisKeys.IsJobId(id)) return null;
        ThrowIfUnavailable();
        // A job this front did not submit (another front, or this one before a restart): mirror it from Redis.
        var v = await Guard(() => Db.HashGetAsync(RedisKeys.Job(id), ["settings", "created"]));
        if (v[0].IsNull) return null;
        var mirror = new Job(RedisKeys.Settings(v[0]!), null, id, DateTimeOffset.FromUnixTimeSeconds((long)v[1]));
        job = _mirrors.GetOrAdd(id, mirror);
        if (ReferenceEquals(job, mirror)) Track(job, added: false); // else another request mirrored it meanwhile
        await Refresh(id);
        return job;
    }

    public JobInfo Info(Job job) => job.Snapshot(null);

    public int RetryAfterSeconds() =>
        (int)Math.Clamp(Math.Ceiling(_avgJobSeconds * (Pending / (double)MaxBatch + 1)), 1, 3600);

    private void Track(Job job, bool added = true)
    {
        if (added) _mirrors[job.Id] = job;
        // DELETE /v1/jobs/{id} or a client gone: tell Redis (a queued job ends now, a running one at its worker).
        job.Cancelled.Register(() => _ = CancelRemote(job.Id));
    }

    private async Task CancelRemote(string id)
    {
        // A mirror cancelled because Redis says so ends here: the script finds the job already ended (2).
        try
        {
            var r = (int)await Db.ScriptEvaluateAsync(RedisKeys.CancelJob, new
            {
                key = RedisKeys.Job(id),
                error = RedisKeys.StoredError.Of(new ApiException(499, "The job was cancelled.", code: "cancelled")),
                ttl = (long)ResultTtl.TotalSeconds,
            });
            if (r == 0) await Db.PublishAsync(RedisKeys.Cancel, id);
            if (r != 2) await Db.PublishAsync(RedisKeys.Events, id);
        }
        catch (Exception e) when (e is RedisException or TimeoutException)
        {
            Console.Error.WriteLine($"pixart serve: could not pass on the cancellation of {id}: {e.Message}");
        }
    }

    /// <summary>How long a cancelled-while-queued job's record stays (workers set it for the jobs they end).</summary>
    public TimeSpan ResultTtl { get; init; } = TimeSpan.FromHours(1);

    private async Task RefreshLoop()
    {
        var ct = _stopping.Token;
        var next = DateTime.UtcNow;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                // Changes workers announced, one at a time in order; all open mirrors and the counts every second.
                using var tick = CancellationTokenSource.CreateLinkedTokenSource(ct);
                tick.CancelAfter(next - DateTime.UtcNow < TimeSpan.Zero ? TimeSpan.Zero : next - DateTime.UtcNow);
                try
                {
                    while (await _changed.Reader.WaitToReadAsync(tick.Token))
                        while (_changed.Reader.TryRead(out var id)) await Refresh(id);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
                if (ct.IsCancellationRequested) return;
                next = DateTime.UtcNow + TimeSpan.FromSeconds(1);
                if (!_redis.IsConnected) continue;
                foreach (var (id, job) in _mirrors)
                    if (!job.IsFinished) await Refresh(id);
                var stream = RedisKeys.Stream(ModelLabel);
                long length = await Db.StreamLengthAsync(stream);
                long running = 0;
                try { running = (await Db.StreamPendingAsync(stream, RedisKeys.Group)).PendingMessageCount; }
                catch (RedisServerException) { } // no group yet: no worker has started
                Volatile.Write(ref _running, (int)running);
                Volatile.Write(ref _pending, (int)Math.Max(0, length - running));
                Forget();
            }
            catch (Exception e) when (e is RedisException or TimeoutException)
            {
                // Redis is down: the mirrors wait; new requests get 503 meanwhile.
            }
            catch (Exception e) when (!ct.IsCancellationRequested)
            {
                Console.Error.WriteLine($"pixart serve: queue refresh: {e.GetType().Name}: {e.Message}");
            }
        }
    }

    /// <summary>Brings one mirror up to date with its job's hash.</summary>
    private async Task Refresh(string id)
    {
        if (!_mirrors.TryGetValue(id, out var job) || job.IsFinished) return;
        RedisValue[] v;
        try { v = await Db.HashGetAsync(RedisKeys.Job(id), ["status", "step", "total_steps", "batch_size", "result", "error"]); }
        catch (Exception e) when (e is RedisException or TimeoutException) { return; }
        string? status = v[0];
        switch (status)
        {
            case null:
                // The hash is gone: its TTL ran out, or Redis lost its data (restarted without persistence).
                job.Fail(new ApiException(503, $"Job {id} was lost by the queue (Redis no longer has it); submit it again.", code: "job_lost"));
                break;
            case "queued":
                break;
            case "running":
                int step = (int)v[1], total = (int)v[2], batch = (int)v[3];
                if (job.Status == JobStatus.Queued) job.MarkRunning(batch);
                if (step > 0 && step != job.Step) job.ReportStep(step, total);
                break;
            case "succeeded":
                job.Succeed(JsonSerializer.Deserialize<ImagesResponse>((string)v[4]!, ServerApp.Json)!);
                _avgJobSeconds = 0.8 * _avgJobSeconds + 0.2 * Math.Max(0.05, (DateTimeOffset.UtcNow - job.Created).TotalSeconds / Math.Max(1, MaxBatch));
                break;
            case "failed":
                job.Fail(RedisKeys.StoredError.Parse(v[5]));
                break;
            case "cancelled":
                job.Cancel();
                break;
        }
        if (job.IsFinished) _finishedOrder.Enqueue(id);
    }

    /// <summary>Keeps the last KeepFinished finished mirrors; older ones are read from Redis again if asked for.</summary>
    private void Forget()
    {
        while (_finishedOrder.Count > KeepFinished && _finishedOrder.TryDequeue(out var id))
            _mirrors.TryRemove(id, out _);
    }

    private void ThrowIfUnavailable()
    {
        if (Unavailable is { } problem) throw new ApiException(503, problem, code: "queue_unavailable");
    }

    private async Task<T> Guard<T>(Func<Task<T>> f)
    {
        try { return await f(); }
        catch (Exception e) when (e is RedisException or TimeoutException)
        {
            throw new ApiException(503, $"The job queue at {_address} did not answer ({e.GetType().Name}); retry in a few seconds.", code: "queue_unavailable");
        }
    }

    public void Dispose()
    {
        if (_stopping.IsCancellationRequested) return;
        _stopping.Cancel();
        try { _refresher.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        _redis.Dispose();
    }
}
