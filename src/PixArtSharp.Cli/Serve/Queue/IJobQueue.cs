using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// What the server's endpoints need of a job queue: submit, find, describe and count jobs. Cancelling a job and
/// waiting for its progress go through the <see cref="Job"/> itself (<see cref="Job.Cancel"/>,
/// <see cref="Job.WaitForChangeAsync"/>), whichever queue made it.
/// Two implementations: <see cref="GenerationQueue"/> runs jobs in this process (plain <c>pixart serve</c>);
/// <see cref="Queue.RedisJobQueue"/> writes them to a Redis stream that <c>pixart worker</c> processes run, and
/// mirrors their progress back into local Job objects (<c>pixart serve --queue redis://…</c>).
/// </summary>
public interface IJobQueue
{
    /// <summary>The model's name in answers (a Hub id or a local folder's name); for Redis it also names the stream.</summary>
    string ModelLabel { get; }
    /// <summary>The pipeline whose configs resolve settings and describe the model (a Redis front loads no weights).</summary>
    PixArtPipeline Pipeline { get; }
    int MaxQueue { get; }
    int MaxBatch { get; }
    int KeepFinished { get; }
    /// <summary>Jobs waiting to run (for Redis: entries in the stream not yet finished).</summary>
    int Pending { get; }
    /// <summary>Jobs running now (for Redis: read by a worker and not yet acknowledged).</summary>
    int Running { get; }
    /// <summary>Null when the queue can take jobs; else what is wrong (the /health answer turns 503).</summary>
    string? Unavailable { get; }

    /// <summary>Queues resolved settings as a job; 429 ApiException when full, 503 when the queue is unreachable.</summary>
    /// <remarks>Asynchronous: a Redis round trip must not hold a thread-pool thread (blocking ones starve the pool).</remarks>
    Task<Job> SubmitAsync(GenerationSettings resolved, RgbImage? source = null);
    /// <summary>A job by id (queued, running or recently finished), or null.</summary>
    Task<Job?> FindAsync(string id);
    /// <summary>What GET /v1/jobs/{id} shows.</summary>
    JobInfo Info(Job job);
    /// <summary>Seconds a client turned away with 429 should wait.</summary>
    int RetryAfterSeconds();
}
