using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Serve;

/// <summary><c>pixart serve</c>: loads the pipeline once, keeps it warm and serves the HTTP API and the web page.</summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "A diffusers model folder or a Hugging Face id",
            DefaultValueFactory = _ => new ServeOptions().Model,
        };
        var revision = new Option<string?>("--revision") { Description = "Hub branch, tag or commit [default: main]" };
        var variant = new Option<string?>("--variant") { Description = "Weights variant such as fp16 (components without it load their default weights, with a warning)" };
        var lora = new Option<string[]>("--lora") { HelpName = "PATH[:SCALE]", Description = "A LoRA adapter merged into the transformer at start-up (PEFT folder or kohya file, optional scale); repeatable. Requests cannot name files." };
        var textEncoder = new Option<string?>("--text-encoder") { HelpName = "ID|DIR", Description = "The T5 text encoder from elsewhere (a folder or a Hub id)" };
        var transformer = new Option<string?>("--transformer") { HelpName = "ID|DIR", Description = "The transformer from elsewhere (a folder or a Hub id)" };
        var vae = new Option<string?>("--vae") { HelpName = "ID|DIR", Description = "The VAE from elsewhere (a folder or a Hub id)" };
        var host = new Option<string>("--host")
        {
            Description = "Address to listen on; the default serves this machine only. Use --token when opening it up",
            DefaultValueFactory = _ => "127.0.0.1",
        };
        var port = new Option<int>("--port", "-p") { Description = "TCP port", DefaultValueFactory = _ => 7860 };
        var token = new Option<string?>("--token")
        {
            Description = "Require 'Authorization: Bearer <token>' on every API call (default: $PIXART_TOKEN if set)",
        };
        var maxQueue = new Option<int>("--max-queue")
        {
            Description = "Requests allowed to wait; beyond this the server answers 429 with Retry-After",
            DefaultValueFactory = _ => 32,
        };
        var maxBatch = new Option<int>("--max-batch")
        {
            Description = "Compatible requests (same size, steps, guidance, scheduler, n) run together, up to this many",
            DefaultValueFactory = _ => 4,
        };
        var dtype = new Option<string>("--dtype")
        {
            Description = "Weights and compute precision: auto (fp16 on CUDA, bf16 on CPUs with AVX-512-BF16 or AMX, else fp32), fp32 (diffusers' pixels), bf16 or fp16",
            DefaultValueFactory = _ => "auto",
        };
        dtype.AcceptOnlyFromAmong("auto", "fp32", "bf16", "fp16");
        var device = new Option<string>("--device") { Description = $"Where the models run: {DeviceSpec.Choices}", DefaultValueFactory = _ => "auto" };
        var offload = new Option<string>("--offload") { Description = $"GPU memory policy: {OffloadPolicy.Choices}", DefaultValueFactory = _ => "none" };
        var threads = new Option<int?>("--threads") { Description = "CPU threads for libtorch (default: all cores)" };
        var warmUp = PipelineSetup.WarmUpOption();
        var (preview, previewVae) = (new Option<string?>("--preview") { HelpName = "tiny|none", Description = "Live previews on the progress events: each step's predicted image, decoded by TAESD (default: tiny when --preview-vae is given)" },
            new Option<string?>("--preview-vae") { HelpName = "ID|DIR", Description = "The TAESD for previews (default: madebyollin/taesd or taesdxl from the Hugging Face cache)" });
        var promptCache = new Option<int>("--prompt-cache") { Description = "Prompts whose T5 output is kept for reuse (LRU; 0 = off)", DefaultValueFactory = _ => 64 };

        var queue = new Option<string?>("--queue")
        {
            Description = "Front only: queue jobs on this Redis (redis://HOST:PORT[/DB]) for `pixart worker` processes to run",
        };

        var cmd = new Command("serve", "Serve an HTTP API (OpenAI-like images endpoint) and a web page, batching concurrent requests")
        {
            model, revision, variant, lora, textEncoder, transformer, vae, host, port, token, maxQueue, maxBatch, dtype, device, offload, threads, warmUp, preview, previewVae, promptCache, queue,
        };
        // Errors become one "error: …" line and pixart's exit codes (2 bad arguments, 3 model not found, …).
        cmd.SetAction(CliApp.Guard(async (parse, _, ct) =>
        {
            var options = new ServeOptions
            {
                Model = parse.GetValue(model)!,
                Revision = parse.GetValue(revision),
                Variant = parse.GetValue(variant),
                Loras = parse.GetValue(lora) ?? [],
                TextEncoder = parse.GetValue(textEncoder),
                Transformer = parse.GetValue(transformer),
                Vae = parse.GetValue(vae),
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                Token = parse.GetValue(token) ?? NullIfEmpty(Environment.GetEnvironmentVariable("PIXART_TOKEN")),
                MaxQueue = parse.GetValue(maxQueue),
                MaxBatch = parse.GetValue(maxBatch),
                Preview = parse.GetValue(preview),
                PreviewVae = parse.GetValue(previewVae),
                PromptCacheEntries = parse.GetValue(promptCache),
            };
            if (!DTypeChoice.IsValid(parse.GetValue(dtype))) throw new ArgumentException($"--dtype must be {DTypeChoice.Choices}.", "--dtype");
            options = options with { DType = parse.GetValue(dtype)!, Device = parse.GetValue(device)!, Offload = parse.GetValue(offload)!, WarmUp = parse.GetValue(warmUp)! };
            DeviceSpec.Parse(options.Device);
            OffloadPolicy.Parse(options.Offload);
            if (parse.GetValue(queue) is { } queueUrl) return await Queue.RedisFront.RunAsync(options, queueUrl, ct);
            return await RunAsync(options, parse.GetValue(threads), ct);
        }));
        return cmd;
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;


    public static async Task<int> RunAsync(ServeOptions options, int? threads, CancellationToken ct)
    {
        options.Validate();
        PipelineSetup.CheckThreads(threads);
        if (options.Variant is { } v && !InputFiles.IsVariantName(v))
            throw new UsageException($"--variant '{v}' is not a variant name (letters, digits, '-', '_', '.', e.g. fp16).");
        // Bind the port first: a taken port is a one-line exit 2 now, not after a minute of loading.
        using var reservation = ServeSafety.ReservePort(options.Host, options.Port);
        if (!ServerApp.IsLoopback(options.Host) && options.Token is null)
            Console.Error.WriteLine($"pixart serve: WARNING: listening on {options.Host} without --token: anyone who can reach this port can generate images.");
        // The first thing that touches libtorch: the device decides which libtorch loads.
        var device = DeviceSpec.Parse(options.Device).Resolve();
        var dtype = DTypeChoice.Resolve(options.DType, device);
        Console.Error.WriteLine($"pixart serve: {TorchRuntime.GetInfo().Describe(device)}");
        if (threads is { } t) TorchRuntime.SetThreads(t);

        var (folder, pipelineOptions, model) = await PipelineSetup.ResolveAsync(new CliOutput(Console.Out, Console.Error, ErrIsTerminal: false), quiet: true,
            new ModelInfo(options.Model, options.Revision, options.Variant, DTypeChoice.Name(dtype)) { TextEncoder = options.TextEncoder, Transformer = options.Transformer, Vae = options.Vae },
            // Weights copied out of their files: a weight file replaced under the running server cannot kill it.
            new PipelineOptions { DType = dtype, KeepLoaded = true, CopyWeights = true, Device = device, Offload = OffloadPolicy.Parse(options.Offload), PromptCacheEntries = options.PromptCacheEntries }, options.Loras, ct);
        Console.Error.WriteLine($"pixart serve: loading {ImageFiles.ModelLabel(options.Model)} ({DTypeChoice.Name(dtype)}) …");
        // The server keeps every component loaded: say so before loading them if they will not fit.
        if (MemoryCheck.Warning(ModelFolder.Open(folder), options.Variant, dtype, allLoaded: true) is { } memory)
            Console.Error.WriteLine($"pixart serve: warning: {memory}");
        using var pipeline = PipelineSetup.Open(folder, pipelineOptions);
        foreach (var w in pipeline.Warnings) Console.Error.WriteLine($"pixart serve: warning: {w}");
        pipeline.Preload();
        PipelineSetup.WarmUpIfAsked(pipeline, options.WarmUp, Console.Error, "pixart serve");
        // Answers go to remote clients: the model by name and weights hash, never this machine's paths.
        var served = ServeSafety.ServedModel(model, pipelineOptions.Transformer ?? Path.Combine(folder, "transformer"));
        using var previews = await PreviewSetup.CreateAsync(new CliOutput(Console.Out, Console.Error, ErrIsTerminal: false), true, options.Preview, options.PreviewVae, null, pipeline, ct);
        using var queue = new GenerationQueue(pipeline, served, options.MaxQueue, options.MaxBatch, options.KeepFinished) { Preview = previews };
        await using var app = ServerApp.Build(options, queue);
        reservation.Dispose(); // hand the port to Kestrel
        try { await app.StartAsync(ct); }
        catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.AddressAlreadyInUse } || e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"--port {options.Port}: {options.Host}:{options.Port} was taken while the model loaded. Stop that server or choose another --port.");
        }
        foreach (var url in app.Urls)
            Console.Error.WriteLine($"pixart serve: ready on {url} (page at /, API at /v1, OpenAPI at /openapi.json); Ctrl+C stops");
        // Ctrl+C / SIGTERM: the host's console lifetime stops the app; the command's token does the same.
        await using (ct.Register(() => app.Lifetime.StopApplication()))
            await app.WaitForShutdownAsync(CancellationToken.None);
        Console.Error.WriteLine("pixart serve: stopped.");
        return 0;
    }
}
