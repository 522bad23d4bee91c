using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve.Queue;

/// <summary>
/// <c>pixart serve --queue redis://…</c>: the same HTTP API and page, with the jobs run by <c>pixart worker</c>
/// processes. The front reads the model's configs and tokenizer only (to resolve and check settings, and describe
/// the model), never its weights.
/// </summary>
public static class RedisFront
{
    public static async Task<int> RunAsync(ServeOptions options, string queueUrl, CancellationToken ct)
    {
        options.Validate();
        var address = RedisQueueAddress.Parse(queueUrl);
        if (!ServerApp.IsLoopback(options.Host) && options.Token is null)
            Console.Error.WriteLine($"pixart serve: WARNING: listening on {options.Host} without --token: anyone who can reach this port can generate images.");
        TorchRuntime.EnsureLoaded();
        string folder = await ModelLocator.ResolveAsync(options.Model, options.Revision, options.Variant, settings: HubSettings.FromEnvironment(), ct: ct);
        using var configs = PixArtPipeline.FromPretrained(folder, new PipelineOptions { Variant = options.Variant, KeepLoaded = false });
        using var queue = new RedisJobQueue(address, configs, ImageFiles.ModelLabel(options.Model), options.MaxQueue, options.MaxBatch, options.KeepFinished);
        if (queue.Unavailable is { } problem) Console.Error.WriteLine($"pixart serve: warning: {problem} (answering 503 until it is back)");
        await using var app = ServerApp.Build(options, queue);
        await app.StartAsync(ct);
        foreach (var url in app.Urls)
            Console.Error.WriteLine($"pixart serve: ready on {url}, jobs for '{queue.ModelLabel}' queued on {address} (run `pixart worker --queue {address} --model {options.Model}`); Ctrl+C stops");
        await using (ct.Register(() => app.Lifetime.StopApplication()))
            await app.WaitForShutdownAsync(CancellationToken.None);
        Console.Error.WriteLine("pixart serve: stopped (queued jobs stay in Redis).");
        return 0;
    }
}
