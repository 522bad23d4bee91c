using System.Diagnostics;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// The server's only user of the pipeline (which is not thread-safe): a bounded queue of jobs and one worker thread
/// that runs them. The worker takes the oldest job and every queued job compatible with it (same size, steps,
/// guidance, scheduler, images per request — see <see cref="BatchKey"/>) up to MaxBatch, and runs them as one
/// pipeline call with one generator per request, so each gets exactly the images it would get alone.
/// </summary>
public sealed class GenerationQueue : IJobQueue, IDisposable
{
    private readonly PixArtPipeline _pipeline;
    private readonly object _gate = new();
    private readonly LinkedList<Job> _pending = new();
    private readonly Dictionary<string, Job> _jobs = new();
    private readonly Queue<Job> _finishedOrder = new();
    private readonly Thread _worker;
    private readonly CancellationTokenSource _stopping = new();
    private int _holds;
    private long _retainedBytes;
    private double _avgBatchSeconds = 2;

    /// <summary>What images record about the model (the same record <c>pixart generate</c> writes).</summary>
    public ModelInfo Model { get; }
    /// <summary>The model's name in answers and in the A1111 text: a Hub id, or a local folder's name.</summary>
    public string ModelLabel => ImageFiles.ModelLabel(Model.Model);
    public int MaxQueue { get; }
    public int MaxBatch { get; }
    public int KeepFinished { get; }
    public PixArtPipeline Pipeline => _pipeline;
    /// <summary>Live previews on the jobs' progress (pixart serve --preview tiny); null = none. The queue does not own it.</summary>
    public PreviewDecoder? Preview { get; set; }

    public long Completed { get; private set; }
    public long Failed { get; private set; }
    public long CancelledCount { get; private set; }
    public long Batches { get; private set; }
    public long Rejected { get; private set; }
    public int Running { get; private set; }
    public int Pending { get { lock (_gate) return _pending.Count; } }
    /// <summary>In process the queue is always there.</summary>
    public string? Unavailable => null;
    Task<Job> IJobQueue.SubmitAsync(GenerationSettings resolved, RgbImage? source) => Task.FromResult(Submit(resolved, source));
    Task<Job?> IJobQueue.FindAsync(string id) => Task.FromResult(Find(id));

    /// <summary>Test hook: runs on the worker before each batch (throwing from it fails the batch).</summary>
    internal Action<IReadOnlyList<Job>>? BeforeBatch { get; set; }

    public GenerationQueue(PixArtPipeline pipeline, ModelInfo model, int maxQueue, int maxBatch, int keepFinished = 64)
    {
        _pipeline = pipeline;
        Model = model;
        MaxQueue = maxQueue;
        MaxBatch = maxBatch;
        KeepFinished = keepFinished;
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "pixart-generate" };
        _worker.Start();
    }

    /// <summary>
    /// What must be equal for two requests to share a pipeline call: everything the denoising loop depends on
    /// besides the prompts and seeds.
    /// </summary>
    public static object BatchKey(GenerationSettings s) =>
        (s.Width, s.Height, s.Steps, s.Guidance, s.Scheduler, s.NumImages, s.ResolutionBinning, s.CleanCaption, s.Strength);

    /// <summary>Queues resolved settings as a job, or throws a 429 ApiException (with a retry estimate) when full.</summary>
    public Job Submit(GenerationSettings resolved, RgbImage? source = null) => Submit(new Job(resolved, source));

    /// <summary>Queues a job made elsewhere (a Redis worker's copy of a queued job keeps its id).</summary>
    public Job Submit(Job job)
    {
        lock (_gate)
        {
            if (_stopping.IsCancellationRequested)
                throw new ApiException(503, "The server is shutting down.", code: "shutting_down");
            if (_pending.Count >= MaxQueue)
            {
                Rejected++;
                throw new ApiException(429, $"The queue is full ({MaxQueue} requests waiting). Retry after {RetryAfterSeconds()} s.", code: "queue_full");
            }
            _pending.AddLast(job);
            _jobs[job.Id] = job;
            Monitor.PulseAll(_gate);
        }
        // A job cancelled while queued leaves the queue at once.
        job.Cancelled.Register(() =>
        {
            lock (_gate)
            {
                if (_pending.Remove(job)) Retire(job);
            }
        });
        return job;
    }

    /// <summary>Seconds a rejected client should wait: the queue ahead, in batches, times the mean batch time.</summary>
    public int RetryAfterSeconds()
    {
        lock (_gate)
            return (int)Math.Clamp(Math.Ceiling(_avgBatchSeconds * (_pending.Count / (double)MaxBatch + 1)), 1, 3600);
    }

    public Job? Find(string id)
    {
        lock (_gate) return _jobs.GetValueOrDefault(id);
    }

    /// <summary>1-based place among waiting jobs, or null when it is not waiting.</summary>
    public int? QueuePosition(Job job)
    {
        lock (_gate)
        {
            int i = 1;
            for (var n = _pending.First; n != null; n = n.Next, i++)
                if (n.Value == job) return i;
            return null;
        }
    }

    public JobInfo Info(Job job) => job.Snapshot(QueuePosition(job));

    /// <summary>
    /// Stops the worker from starting new batches until the returned handle is disposed (a running batch finishes).
    /// For maintenance and tests that need a deterministic queue.
    /// </summary>
    public IDisposable Hold()
    {
        lock (_gate) _holds++;
        return new Releaser(this);
    }

    private sealed class Releaser(GenerationQueue q) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 1) return;
            lock (q._gate) { q._holds--; Monitor.PulseAll(q._gate); }
        }
    }

    private void WorkerLoop()
    {
        while (true)
        {
            List<Job> batch;
            lock (_gate)
            {
                while (!_stopping.IsCancellationRequested && (_pending.Count == 0 || _holds > 0))
                    Monitor.Wait(_gate);
                if (_stopping.IsCancellationRequested) return;
                batch = TakeBatch();
                Running = batch.Count;
            }
            var sw = Stopwatch.StartNew();
            try
            {
                RunBatch(batch);
            }
            catch (Exception e)
            {
                // RunBatch answers every job itself; this is the last line that keeps the worker alive.
                foreach (var j in batch) j.Fail(ServeSafety.ToApiError(e));
            }
            lock (_gate)
            {
                Running = 0;
                Batches++;
                _avgBatchSeconds = 0.7 * _avgBatchSeconds + 0.3 * sw.Elapsed.TotalSeconds;
                foreach (var j in batch)
                {
                    switch (j.Status)
                    {
                        case JobStatus.Succeeded: Completed++; break;
                        case JobStatus.Failed: Failed++; break;
                        default: CancelledCount++; break;
                    }
                    Retire(j);
                }
            }
        }
    }

    /// <summary>
    /// The oldest job and the compatible jobs behind it, in queue order (under _gate). A job asking for several
    /// images runs alone: for several prompts with num_images_per_prompt &gt; 1, diffusers 0.29.2 (which the
    /// pipeline mirrors) lays the prompt attention masks out as (p0, p1, p0, p1) against embeddings (p0, p0, p1, p1),
    /// so batched it would not get the images it gets alone. An image-to-image job runs alone too (each has its own
    /// source, and batching the VAE encoder is not proven bit-identical to encoding alone), and is never taken into
    /// a text-to-image batch.
    /// </summary>
    private List<Job> TakeBatch()
    {
        var first = _pending.First!.Value;
        var key = BatchKey(first.Settings);
        int limit = first.Settings.NumImages > 1 || first.Source is not null ? 1 : MaxBatch;
        var batch = new List<Job>();
        for (var n = _pending.First; n != null && batch.Count < limit;)
        {
            var next = n.Next;
            if (batch.Count == 0 || (n.Value.Source is null && BatchKey(n.Value.Settings).Equals(key)))
            {
                batch.Add(n.Value);
                _pending.Remove(n);
            }
            n = next;
        }
        return batch;
    }

    /// <summary>Finished jobs' images kept in memory for GET /v1/jobs/{id}, at most (besides the newest job).</summary>
    public const long MaxRetainedBytes = 512L << 20;

    /// <summary>
    /// Keeps the last KeepFinished finished jobs for GET /v1/jobs/{id}, and no more than MaxRetainedBytes of their
    /// images, forgetting the oldest first (under _gate).
    /// </summary>
    private void Retire(Job job)
    {
        _finishedOrder.Enqueue(job);
        _retainedBytes += job.ResultBytes;
        while (_finishedOrder.Count > KeepFinished || (_retainedBytes > MaxRetainedBytes && _finishedOrder.Count > 1))
        {
            var old = _finishedOrder.Dequeue();
            _retainedBytes -= old.ResultBytes;
            if (old.IsFinished) _jobs.Remove(old.Id);
        }
    }

    private void RunBatch(List<Job> jobs)
    {
        jobs.RemoveAll(j => j.IsFinished);
        if (jobs.Count == 0) return;
        foreach (var j in jobs) j.MarkRunning(jobs.Count);
        try
        {
            BeforeBatch?.Invoke(jobs);
            Generate(jobs);
        }
        catch (OperationCanceledException)
        {
            // Only happens when every job of the batch was cancelled; Cancel already answered them.
            foreach (var j in jobs) j.Cancel();
        }
        catch (Exception e) when (jobs.Count > 1)
        {
            // One request must not sink the others: run each alone, so only the bad one fails.
            Console.Error.WriteLine($"serve: a batch of {jobs.Count} failed ({e.GetType().Name}: {e.Message}); running its requests one by one.");
            foreach (var j in jobs)
                if (!j.IsFinished) RunBatch([j]);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"serve: job {jobs[0].Id} failed: {e.GetType().Name}: {e.Message}");
            jobs[0].Fail(ServeSafety.ToApiError(e)); // NaN output, a broken weight file, …: named, without local paths
        }
    }

    private void Generate(List<Job> jobs)
    {
        var s0 = jobs[0].Settings;
        // A single request runs exactly as `pixart generate` runs it (one generator from its seed); a batch gives
        // each request its own generator, which reproduces those draws row group by row group.
        using var sourceTensor = jobs[0].Source is { } src ? ImageToImage.Preprocess(src) : null;
        var request = GenerationSettings.ToBatchRequest(jobs.Select(j => j.Settings).ToList()) with
        {
            Image = sourceTensor,
            Strength = sourceTensor is null ? null : s0.Strength,
        };
        using var allCancelled = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        var registrations = jobs.Select(j => j.Cancelled.Register(() =>
        {
            if (jobs.All(x => x.Cancelled.IsCancellationRequested)) allCancelled.Cancel();
        })).ToList();
        try
        {
            using var output = _pipeline.Generate(request, info =>
            {
                var frames = PreviewFrames.For(Preview, info, jobs.Count, s0.NumImages);
                for (int b = 0; b < jobs.Count; b++) jobs[b].ReportStep(info.Step, info.TotalSteps, frames?[b]);
                return !allCancelled.IsCancellationRequested;
            }, allCancelled.Token);

            var rgb = output.ToRgb8();
            int n = s0.NumImages;
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            for (int b = 0; b < jobs.Count; b++)
            {
                var job = jobs[b];
                if (job.IsFinished) continue; // cancelled while its batch-mates went on
                var data = new List<ImageData>(n);
                // Image k of this request is image k of the same request run by `pixart generate`: same bytes.
                string parameters = ImageFiles.Metadata(job.Settings, 0, Model)[0].Text;
                for (int k = 0; k < n; k++)
                {
                    byte[] png = ImageFiles.EncodePng(job.Settings, k, rgb[b * n + k], output.Width, output.Height, Model);
                    data.Add(new ImageData(Convert.ToBase64String(png), job.Settings.Seed!.Value, parameters, job.Settings.Styled().Prompts[0]));
                }
                job.Succeed(new ImagesResponse(created, data, job.Id, job.Settings, jobs.Count));
            }
        }
        finally
        {
            foreach (var r in registrations) r.Dispose();
            foreach (var g in request.Generators ?? []) g.Dispose();
        }
    }

    /// <summary>Stops the worker after its current batch; waiting jobs are cancelled.</summary>
    public void Dispose()
    {
        List<Job> waiting;
        lock (_gate)
        {
            if (_stopping.IsCancellationRequested) return;
            _stopping.Cancel();
            waiting = [.. _pending];
            _pending.Clear();
            Monitor.PulseAll(_gate);
        }
        foreach (var j in waiting) j.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
    }
}
