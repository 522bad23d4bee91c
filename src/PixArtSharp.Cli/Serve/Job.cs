using System.Text.Json.Serialization;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

[JsonConverter(typeof(JsonStringEnumConverter<JobStatus>))]
public enum JobStatus
{
    [JsonStringEnumMemberName("queued")] Queued,
    [JsonStringEnumMemberName("running")] Running,
    [JsonStringEnumMemberName("succeeded")] Succeeded,
    [JsonStringEnumMemberName("failed")] Failed,
    [JsonStringEnumMemberName("cancelled")] Cancelled,
}

/// <summary>What GET /v1/jobs/{id} and the progress events show of a job.</summary>
public sealed record JobInfo(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("status")] JobStatus Status,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("step")] int Step,
    [property: JsonPropertyName("total_steps")] int TotalSteps,
    [property: JsonPropertyName("phase")] string Phase,
    [property: JsonPropertyName("queue_position")] int? QueuePosition,
    [property: JsonPropertyName("batch_size")] int BatchSize,
    [property: JsonPropertyName("settings")] GenerationSettings Settings,
    [property: JsonPropertyName("result")] ImagesResponse? Result,
    [property: JsonPropertyName("error")] ErrorDetail? Error)
{
    /// <summary>While running with previews on: the latest step's frame as a data: URL (JPEG), else absent.</summary>
    [JsonPropertyName("preview"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Preview { get; init; }
}

/// <summary>
/// One accepted request: its resolved settings, where it is (queued, running step k/N, finished) and its result.
/// Every change bumps a version that progress streams wait on.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "The CancellationTokenSource has no timer and no linked tokens: disposing it frees nothing.")]
public sealed class Job
{
    private readonly object _gate = new();
    private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _cancel = new();

    public string Id { get; }
    public GenerationSettings Settings { get; }
    public DateTimeOffset Created { get; }
    public JobStatus Status { get; private set; } = JobStatus.Queued;
    public int Step { get; private set; }
    public int TotalSteps { get; private set; }
    public string Phase { get; private set; } = "queued";
    public int BatchSize { get; private set; }
    public int Version { get; private set; }
    public ImagesResponse? Result { get; private set; }
    public ApiException? Error { get; private set; }
    /// <summary>The memory the answer's images take (their base64 text).</summary>
    public long ResultBytes => Result?.Data.Sum(d => (long)d.B64Json.Length * sizeof(char)) ?? 0;
    /// <summary>Fires when the job is cancelled (DELETE, a disconnected client, shutdown).</summary>
    public CancellationToken Cancelled => _cancel.Token;
    /// <summary>Completes (never faults) when the job reaches a final status.</summary>
    public Task Finished => _finished.Task;
    public bool IsFinished => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Cancelled;

    /// <summary>Image-to-image: the source, already at the output size; null for text-to-image.</summary>
    public PixArtSharp.Imaging.RgbImage? Source { get; }

    /// <param name="id">A job queued elsewhere (Redis) keeps its id here; new jobs get a fresh one.</param>
    public Job(GenerationSettings resolved, PixArtSharp.Imaging.RgbImage? source = null, string? id = null, DateTimeOffset? created = null)
    {
        Id = id ?? NewId();
        Created = created ?? DateTimeOffset.UtcNow;
        Settings = resolved;
        Source = source;
        TotalSteps = resolved.Steps ?? 0;
    }

    public static string NewId() => "job_" + Guid.NewGuid().ToString("N")[..20];

    /// <summary>Waits until the version moves past <paramref name="seenVersion"/> (returns at once if it has).</summary>
    public Task WaitForChangeAsync(int seenVersion, CancellationToken ct)
    {
        Task t;
        lock (_gate) t = Version != seenVersion ? Task.CompletedTask : _changed.Task;
        return t.WaitAsync(ct);
    }

    private void Changed()
    {
        // Called under _gate.
        Version++;
        var old = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        old.TrySetResult();
    }

    internal void MarkRunning(int batchSize)
    {
        lock (_gate)
        {
            if (IsFinished) return;
            Status = JobStatus.Running;
            BatchSize = batchSize;
            Phase = "encoding";
            Changed();
        }
    }

    private string? _preview;

    internal void ReportStep(int step, int total, string? preview = null)
    {
        lock (_gate)
        {
            if (IsFinished) return;
            Step = step;
            TotalSteps = total;
            Phase = step >= total ? "decoding" : "denoising";
            _preview = preview ?? _preview;
            Changed();
        }
    }

    /// <summary>Cancels the job; false if it had already finished.</summary>
    public bool Cancel()
    {
        lock (_gate)
        {
            if (IsFinished) return false;
            Status = JobStatus.Cancelled;
            Phase = "cancelled";
            Error = new ApiException(499, "The job was cancelled.", code: "cancelled");
            Changed();
        }
        _cancel.Cancel();
        _finished.TrySetResult();
        return true;
    }

    internal void Succeed(ImagesResponse result)
    {
        lock (_gate)
        {
            if (IsFinished) return;
            Status = JobStatus.Succeeded;
            Phase = "done";
            Result = result;
            Changed();
        }
        _finished.TrySetResult();
    }

    internal void Fail(ApiException error)
    {
        lock (_gate)
        {
            if (IsFinished) return;
            Status = JobStatus.Failed;
            Phase = "failed";
            Error = error;
            Changed();
        }
        _finished.TrySetResult();
    }

    public JobInfo Snapshot(int? queuePosition)
    {
        lock (_gate)
            return new JobInfo(Id, "job", Status, Created.ToUnixTimeSeconds(), Step, TotalSteps, Phase,
                Status == JobStatus.Queued ? queuePosition : null, BatchSize, Settings, Result,
                Error is null ? null : (ErrorDetailOf(Error)))
            { Preview = Status == JobStatus.Running ? _preview : null };
    }

    internal static ErrorDetail ErrorDetailOf(ApiException e) => e.Body.Error;
}
