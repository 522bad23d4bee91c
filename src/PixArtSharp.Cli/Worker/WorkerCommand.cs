using System.CommandLine;
using PixArtSharp.Cli.Serve;
using PixArtSharp.Cli.Serve.Queue;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Worker;

/// <summary>
/// <c>pixart worker --queue redis://… --model …</c>: loads the pipeline once and runs the jobs that
/// <c>pixart serve --queue</c> fronts put on the model's stream, one worker process per GPU or CPU box.
/// </summary>
public static class WorkerCommand
{
    public static Command Create()
    {
        var queue = new Option<string>("--queue", "-q") { Description = "The Redis holding the jobs: redis://HOST:PORT[/DB]", Required = true };
        var model = new Option<string>("--model", "-m")
        {
            Description = "A diffusers model folder or a Hugging Face id; the worker takes this model's jobs only",
            DefaultValueFactory = _ => new ServeOptions().Model,
        };
        var revision = new Option<string?>("--revision") { Description = "Hub branch, tag or commit [default: main]" };
        var variant = new Option<string?>("--variant") { Description = "Weights variant such as fp16" };
        var dtype = new Option<string>("--dtype") { Description = "Weights and compute precision: auto (fp16 on CUDA, bf16 on CPUs with AVX-512-BF16 or AMX, else fp32), fp32, bf16 or fp16", DefaultValueFactory = _ => "auto" };
        dtype.AcceptOnlyFromAmong("auto", "fp32", "bf16", "fp16");
        var device = new Option<string>("--device") { Description = $"{DeviceSpec.Choices} (one worker per GPU)", DefaultValueFactory = _ => "auto" };
        var threads = new Option<int?>("--threads") { Description = "CPU threads for libtorch (default: all cores)" };
        var warmUp = PipelineSetup.WarmUpOption();
        var maxBatch = new Option<int>("--max-batch") { Description = "Jobs taken at once; compatible ones run as one batch", DefaultValueFactory = _ => 4 };
        var name = new Option<string?>("--name") { Description = "This worker's consumer name (default: host-pid)" };
        var visibility = new Option<double>("--visibility-timeout")
        {
            Description = "Seconds without a heartbeat after which another worker takes a job over (its worker died)",
            DefaultValueFactory = _ => 60,
        };
        var attempts = new Option<int>("--max-attempts") { Description = "Times a job is started before it fails for good", DefaultValueFactory = _ => 3 };
        var ttl = new Option<double>("--result-ttl") { Description = "Seconds a finished job's result stays in Redis", DefaultValueFactory = _ => 3600 };

        var cmd = new Command("worker", "Run queued jobs from Redis for pixart serve --queue fronts (one process per GPU)")
        {
            queue, model, revision, variant, dtype, device, threads, warmUp, maxBatch, name, visibility, attempts, ttl,
        };
        cmd.SetAction(CliApp.Guard(async (parse, output, ct) =>
        {
            var address = RedisQueueAddress.Parse(parse.GetValue(queue)!);
            var options = new WorkerOptions
            {
                MaxBatch = parse.GetValue(maxBatch),
                VisibilityTimeout = TimeSpan.FromSeconds(parse.GetValue(visibility)),
                MaxAttempts = parse.GetValue(attempts),
                ResultTtl = TimeSpan.FromSeconds(parse.GetValue(ttl)),
            };
            if (parse.GetValue(name) is { } n) options = options with { Consumer = n };
            options.Validate();
            // The first thing that touches libtorch: the device decides which libtorch loads.
            var dev = DeviceSpec.Parse(parse.GetValue(device)).Resolve();
            var dt = DTypeChoice.Resolve(parse.GetValue(dtype), dev);
            string modelArg = parse.GetValue(model)!;
            string? variantArg = parse.GetValue(variant);

            if (parse.GetValue(threads) is { } t) TorchRuntime.SetThreads(t);
            string folder = await ModelLocator.ResolveAsync(modelArg, parse.GetValue(revision), variantArg, settings: HubSettings.FromEnvironment(), ct: ct);
            output.Err.WriteLine($"pixart worker: loading {modelArg} ({DTypeChoice.Name(dt)}, {parse.GetValue(device)}) …");
            using var pipeline = PixArtPipeline.FromPretrained(folder, new PipelineOptions { DType = dt, Variant = variantArg, KeepLoaded = true, CopyWeights = true, Device = dev });
            foreach (var w in pipeline.Warnings) output.Err.WriteLine($"pixart worker: warning: {w}");
            pipeline.Preload();
            PipelineSetup.WarmUpIfAsked(pipeline, parse.GetValue(warmUp)!, output.Err, "pixart worker");
            using var generation = new GenerationQueue(pipeline, ModelRecord(modelArg, folder, variantArg, dt), maxQueue: 1 << 16, maxBatch: options.MaxBatch);
            using var worker = new RedisWorker(address, generation, options, output.Err);
            await worker.RunAsync(ct);
            output.Err.WriteLine($"pixart worker: stopped ({worker.Completed} done, {worker.Failed} failed).");
            return ExitCodes.Ok;
        }));
        return cmd;
    }


    /// <summary>
    /// What the images record about the model — exactly as <c>pixart serve</c> and <c>pixart generate</c> record
    /// it — so every worker started the same way gives the same PNG bytes.
    /// </summary>
    public static ModelInfo ModelRecord(string modelArg, string folder, string? variant, ScalarType dtype)
    {
        bool isLocal = Directory.Exists(modelArg);
        return new ModelInfo(
            isLocal ? Path.GetFullPath(modelArg) : modelArg,
            isLocal ? null : Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)),
            variant,
            DTypeChoice.Name(dtype));
    }
}
