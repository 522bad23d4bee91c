using System.Collections.Concurrent;
using System.Text.Json;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Cli.Serve.Queue;
using StackExchange.Redis;

namespace PixArtSharp.Cli.Worker;

/// <summary>What <c>pixart worker</c> was started with, besides the model.</summary>
public sealed record WorkerOptions
{
    /// <summary>This worker's name in the consumer group (unique per process: host and pid by default).</summary>
    public string Consumer { get; init; } = $"{Environment.MachineName}-{Environment.ProcessId}";
    /// <summary>Jobs read at once; compatible ones run as one pipeline call (as <c>pixart serve</c> batches).</summary>
    public int MaxBatch { get; init; } = 4;
    /// <summary>A job held this long without a heartbeat (its worker died) is claimed by another worker.</summary>
    public TimeSpan VisibilityTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Times a job may be started before it fails for good (a job that kills its workers stops here).</summary>
    public int MaxAttempts { get; init; } = 3;
    /// <summary>How long a finished job's result stays in Redis.</summary>
    public TimeSpan ResultTtl { get; init; } = TimeSpan.FromHours(1);

    public void Validate()
    {
        if (MaxBatch < 1) throw new ArgumentException($"--max-batch must be at least 1, got {MaxBatch}.", "--max-batch");
        if (MaxAttempts < 1) throw new ArgumentException($"--max-attempts must be at least 1, got {MaxAttempts}.", "--max-attempts");
        if (VisibilityTimeout < TimeSpan.FromSeconds(1)) throw new ArgumentException("--visibility-timeout must be at least 1 second.", "--visibility-timeout");
        if (ResultTtl < TimeSpan.FromSeconds(1)) throw new ArgumentException("--result-ttl must be at least 1 second.", "--result-ttl");
        if (string.IsNullOrWhiteSpace(Consumer) || Consumer.Any(char.IsWhiteSpace)) throw new ArgumentException("--name must be non-empty, without spaces.", "--name");
    }
}

/// <summary>
/// A consumer of one model's job stream. Each round it takes up to MaxBatch jobs — first jobs whose worker went
/// silent for the visibility timeout (<c>XAUTOCLAIM</c>), then new ones (<c>XREADGROUP</c>) — and runs them through
/// a <see cref="GenerationQueue"/>, the very code <c>pixart serve</c> runs in process (same batching, same PNG
/// bytes). Progress goes to the job's hash as it happens; the result (or failure) is stored first and the stream
/// entry acknowledged after, so a worker dying at any point leaves the job to another. While it holds jobs it
/// re-claims them every third of the visibility timeout (a heartbeat), so long batches are not taken away.
/// Redis down: the worker keeps its finished results and retries with backoff (0.25 s doubling to 5 s).
/// </summary>
public sealed class RedisWorker : IDisposable
{
    private readonly RedisQueueAddress _address;
    private readonly GenerationQueue _queue;
    private readonly WorkerOptions _options;
    private readonly string _model;
    private readonly ConcurrentDictionary<string, (Job Job, RedisValue Entry)> _held = new();
    private readonly ConcurrentDictionary<string, byte> _cancelledByClient = new();
    private readonly SemaphoreSlim _wake = new(0, 1);
    private ConnectionMultiplexer? _redis;
    private readonly TextWriter _log;

    public long Completed;
    public long Failed;
    public long Reclaimed;

    public RedisWorker(RedisQueueAddress address, GenerationQueue queue, WorkerOptions options, TextWriter? log = null)
    {
        options.Validate();
        _address = address;
        _queue = queue;
        _options = options;
        _model = queue.ModelLabel;
        _log = log ?? Console.Error;
    }

    private IDatabase Db => _redis!.GetDatabase();
    private RedisKey Stream => RedisKeys.Stream(_model);

    /// <summary>Works until <paramref name="ct"/> is cancelled; then finishes (and stores) the round it holds.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        _redis = await ConnectionMultiplexer.ConnectAsync(_address.Options("pixart-worker-" + _options.Consumer));
        var sub = _redis.GetSubscriber();
        await Retry(() => sub.SubscribeAsync(RedisKeys.Cancel, (_, id) =>
        {
            if (id.HasValue && _held.TryGetValue(id!, out var h))
            {
                _cancelledByClient[id!] = 0;
                h.Job.Cancel();
            }
        }), ct);
        await Retry(() => sub.SubscribeAsync(RedisKeys.Wake(_model), (_, _) =>
        {
            try { _wake.Release(); } catch (SemaphoreFullException) { }
        }), ct);
        using var heartbeatStop = new CancellationTokenSource();
        var heartbeat = Task.Run(() => Heartbeat(heartbeatStop.Token), CancellationToken.None);   // stopped by heartbeatStop, after the loop
        var backoff = TimeSpan.FromMilliseconds(250);
        bool groupReady = false, saidDown = false;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    if (!groupReady)
                    {
                        await EnsureGroup();
                        groupReady = true;
                        _log.WriteLine($"pixart worker: {_options.Consumer} ready on {_address}, stream {Stream}, group {RedisKeys.Group}");
                    }
                    var entries = await Take();
                    saidDown = false;
                    backoff = TimeSpan.FromMilliseconds(250);
                    if (entries.Length == 0)
                    {
                        // A front announces each job; the timeout covers a missed announcement and reclaims.
                        try { await _wake.WaitAsync(TimeSpan.FromMilliseconds(250), ct); } catch (OperationCanceledException) { }
                        continue;
                    }
                    await RunRound(entries);
                }
                catch (RedisServerException e) when (e.Message.Contains("NOGROUP", StringComparison.Ordinal))
                {
                    groupReady = false; // Redis lost the group (restarted without its data): make it again
                }
                catch (Exception e) when (e is RedisException or TimeoutException)
                {
                    if (!saidDown) _log.WriteLine($"pixart worker: Redis at {_address} unreachable ({e.GetType().Name}: {e.Message}); retrying with backoff");
                    saidDown = true;
                    try { await Task.Delay(backoff, ct); } catch (OperationCanceledException) { }
                    backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
                }
            }
        }
        finally
        {
            heartbeatStop.Cancel();
            await heartbeat;
        }
    }

    private async Task EnsureGroup()
    {
        try { await Db.StreamCreateConsumerGroupAsync(Stream, RedisKeys.Group, "0-0", createStream: true); }
        catch (RedisServerException e) when (e.Message.Contains("BUSYGROUP", StringComparison.Ordinal)) { }
    }

    /// <summary>Up to MaxBatch entries: abandoned ones first (their worker stopped), then new ones.</summary>
    private async Task<StreamEntry[]> Take()
    {
        var claimed = await Db.StreamAutoClaimAsync(Stream, RedisKeys.Group, _options.Consumer,
            (long)_options.VisibilityTimeout.TotalMilliseconds, "0-0", _options.MaxBatch);
        if (claimed.ClaimedEntries.Length > 0)
        {
            Interlocked.Add(ref Reclaimed, claimed.ClaimedEntries.Length);
            return claimed.ClaimedEntries;
        }
        return await Db.StreamReadGroupAsync(Stream, RedisKeys.Group, _options.Consumer, ">", _options.MaxBatch);
    }

    private async Task RunRound(StreamEntry[] entries)
    {
        var jobs = new List<(Job Job, RedisValue Entry)>();
        foreach (var entry in entries)
        {
            string? id = entry["id"];
            if (id is null || !RedisKeys.IsJobId(id)) { await Ack(entry.Id); continue; }
            var key = RedisKeys.Job(id);
            var v = await Db.HashGetAsync(key, ["status", "settings", "created", "source", "cancel", "model"]);
            string? status = v[0];
            // Gone (expired), or already answered (a worker stored it and died before acknowledging): done.
            if (status is null || RedisKeys.IsFinal(status)) { await Ack(entry.Id); continue; }
            long attempts = await Db.HashIncrementAsync(key, "attempts");
            if ((string?)v[5] != _model)
            {
                await End(id, entry.Id, "failed", null, new ApiException(500, $"Job {id} is for model '{v[5]}' but sits in the stream of '{_model}'.", code: "wrong_model"));
                continue;
            }
            if (attempts > _options.MaxAttempts)
            {
                await End(id, entry.Id, "failed", null, new ApiException(500,
                    $"Generation failed: the job was started {attempts - 1} times and each worker running it stopped before finishing " +
                    "(killed, out of memory, or a crash); it is not retried again.", code: "worker_lost"));
                continue;
            }
            if (!v[4].IsNull)
            {
                await End(id, entry.Id, "cancelled", null, new ApiException(499, "The job was cancelled.", code: "cancelled"));
                continue;
            }
            var settings = RedisKeys.Settings(v[1]!);
            var source = v[3].IsNull ? null : RedisKeys.UnpackSource(v[3]!);
            var job = new Job(settings, source, id, DateTimeOffset.FromUnixTimeSeconds((long)v[2]));
            jobs.Add((job, entry.Id));
        }
        if (jobs.Count == 0) return;
        var roundClock = System.Diagnostics.Stopwatch.StartNew();
        foreach (var j in jobs) _held[j.Job.Id] = j;
        // Queued together under a hold: the generation thread sees them all at once and batches what is compatible.
        using (_queue.Hold())
            foreach (var j in jobs) _queue.Submit(j.Job);
        await Task.WhenAll(jobs.Select(j => Follow(j.Job, j.Entry)));
        if (Trace) _log.WriteLine($"round of {jobs.Count}: {roundClock.Elapsed.TotalMilliseconds:F0} ms");
    }

    internal bool Trace { get; set; }

    /// <summary>Mirrors a running job's progress into Redis, then stores its end and acknowledges it.</summary>
    private async Task Follow(Job job, RedisValue entry)
    {
        try
        {
            int seen = -1;
            while (true)
            {
                await job.WaitForChangeAsync(seen, CancellationToken.None);
                seen = job.Version;
                if (job.IsFinished) break;
                var info = job.Snapshot(null);
                if (info.Status == JobStatus.Queued) continue; // waiting behind another batch of this round
                try
                {
                    await Db.ScriptEvaluateAsync(RedisKeys.Progress, new
                    {
                        key = RedisKeys.Job(job.Id),
                        phase = info.Phase,
                        step = info.Step,
                        total = info.TotalSteps,
                        batch = info.BatchSize,
                        worker = _options.Consumer,
                    });
                    await Db.PublishAsync(RedisKeys.Events, job.Id, CommandFlags.FireAndForget);
                }
                catch (Exception e) when (e is RedisException or TimeoutException) { } // progress is best effort
            }
            if (job.Status == JobStatus.Cancelled && !_cancelledByClient.ContainsKey(job.Id))
                return; // this worker is stopping: the job stays unacknowledged and another worker takes it
            string status = job.Status switch { JobStatus.Succeeded => "succeeded", JobStatus.Failed => "failed", _ => "cancelled" };
            if (job.Status == JobStatus.Succeeded) Interlocked.Increment(ref Completed);
            else if (job.Status == JobStatus.Failed) Interlocked.Increment(ref Failed);
            var backoff = TimeSpan.FromMilliseconds(250);
            // The result is kept until Redis takes it: acknowledging before storing could lose it.
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    await End(job.Id, entry, status, job.Result, job.Error);
                    return;
                }
                catch (Exception e) when (e is RedisException or TimeoutException)
                {
                    if (attempt == 0) _log.WriteLine($"pixart worker: could not store the result of {job.Id} ({e.Message}); retrying with backoff");
                    await Task.Delay(backoff);
                    backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
                }
            }
        }
        finally
        {
            _held.TryRemove(job.Id, out _);
            _cancelledByClient.TryRemove(job.Id, out _);
        }
    }

    /// <summary>Stores a job's end (unless it already ended), then acknowledges and deletes its stream entry.</summary>
    private async Task End(string id, RedisValue entry, string status, ImagesResponse? result, ApiException? error)
    {
        await Db.ScriptEvaluateAsync(RedisKeys.Finish, new
        {
            key = RedisKeys.Job(id),
            status,
            phase = status == "succeeded" ? "done" : status,
            result = result is null ? "" : JsonSerializer.Serialize(result, ServerApp.Json),
            error = error is null ? "" : RedisKeys.StoredError.Of(error),
            ttl = (long)_options.ResultTtl.TotalSeconds,
            worker = _options.Consumer,
        });
        await Ack(entry);
        await Db.PublishAsync(RedisKeys.Events, id);
    }

    private async Task Ack(RedisValue entry)
    {
        var tx = Db.CreateTransaction();
        _ = tx.StreamAcknowledgeAsync(Stream, RedisKeys.Group, entry);
        _ = tx.StreamDeleteAsync(Stream, [entry]);
        await tx.ExecuteAsync();
    }

    /// <summary>Re-claims the entries this worker holds, resetting their idle time, so no one takes them over.</summary>
    private async Task Heartbeat(CancellationToken ct)
    {
        var every = _options.VisibilityTimeout / 3;
        while (!ct.IsCancellationRequested)
        {
            try { await Task.Delay(every, ct); } catch (OperationCanceledException) { return; }
            var entries = _held.Values.Select(h => h.Entry).Distinct().ToArray();
            if (entries.Length == 0) continue;
            try { await Db.StreamClaimIdsOnlyAsync(Stream, RedisKeys.Group, _options.Consumer, 0, entries); }
            catch (Exception e) when (e is RedisException or TimeoutException) { }
        }
    }

    private static async Task Retry(Func<Task> f, CancellationToken ct)
    {
        var backoff = TimeSpan.FromMilliseconds(250);
        while (true)
        {
            try { await f(); return; }
            catch (Exception e) when ((e is RedisException or TimeoutException) && !ct.IsCancellationRequested)
            {
                await Task.Delay(backoff, ct);
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    public void Dispose()
    {
        _redis?.Dispose();
        _wake.Dispose();
    }
}
