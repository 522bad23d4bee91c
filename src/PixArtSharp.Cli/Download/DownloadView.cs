using System.Diagnostics;
using System.Globalization;
using PixArtSharp.Hub;
using Spectre.Console;

namespace PixArtSharp.Cli.Download;

/// <summary>
/// Shows a Hub download: on a terminal a Spectre.Console bar per file with bytes, speed and time left; otherwise
/// plain lines (a file starting, every few seconds while it runs, and done with its size and speed); nothing
/// with --quiet.
/// </summary>
public static class DownloadView
{
    public static async Task<T> RunAsync<T>(CliOutput output, bool quiet, Func<IProgress<DownloadProgress>?, Task<T>> body)
    {
        if (quiet) return await body(null).ConfigureAwait(false);
        var live = output.LiveConsole();
        if (live is null) return await body(new PlainDownloadProgress(output.Err)).ConfigureAwait(false);
        return await live.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                     new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .StartAsync(ctx => body(new LiveDownloadProgress(ctx))).ConfigureAwait(false);
    }

    public static string Bytes(double n)
    {
        string[] units = ["B", "KB", "MB", "GB", "TB"];
        int u = 0;
        while (n >= 1000 && u < units.Length - 1) { n /= 1000; u++; }
        return u == 0 ? $"{n:0} B" : string.Create(CultureInfo.InvariantCulture, $"{n:0.0} {units[u]}");
    }

    /// <summary>One Spectre task per file; HubClient reports from the thread pool, so updates are locked.</summary>
    private sealed class LiveDownloadProgress(ProgressContext ctx) : IProgress<DownloadProgress>
    {
        private readonly Dictionary<string, ProgressTask> _tasks = new(StringComparer.Ordinal);

        public void Report(DownloadProgress p)
        {
            lock (_tasks)
            {
                if (!_tasks.TryGetValue(p.File, out var task))
                {
                    task = ctx.AddTask(Markup.Escape(p.File), maxValue: Math.Max(1, p.TotalBytes));
                    task.Value = p.BytesDone; // bytes from an earlier, interrupted run: not part of the speed
                    _tasks[p.File] = task;
                }
                else if (p.BytesDone > task.Value) task.Increment(p.BytesDone - task.Value);
                if (p.IsComplete) { task.Value = task.MaxValue; task.StopTask(); }
            }
        }
    }

    private sealed class PlainDownloadProgress(TextWriter err) : IProgress<DownloadProgress>
    {
        private static readonly TimeSpan Every = TimeSpan.FromSeconds(5);
        private readonly Dictionary<string, (Stopwatch Clock, long StartBytes, TimeSpan LastLine)> _files = new(StringComparer.Ordinal);

        public void Report(DownloadProgress p)
        {
            lock (_files)
            {
                if (!_files.TryGetValue(p.File, out var f))
                {
                    if (p.IsComplete)
                    {
                        err.WriteLine($"cached    {p.File} ({Bytes(p.TotalBytes)})");
                        _files[p.File] = (Stopwatch.StartNew(), p.BytesDone, TimeSpan.Zero);
                        return;
                    }
                    err.WriteLine(p.BytesDone > 0
                        ? $"resuming  {p.File} at {Bytes(p.BytesDone)} of {Bytes(p.TotalBytes)}"
                        : $"download  {p.File} ({Bytes(p.TotalBytes)})");
                    _files[p.File] = (Stopwatch.StartNew(), p.BytesDone, TimeSpan.Zero);
                    return;
                }
                var elapsed = f.Clock.Elapsed;
                double speed = (p.BytesDone - f.StartBytes) / Math.Max(elapsed.TotalSeconds, 1e-3);
                if (p.IsComplete)
                {
                    if (f.LastLine == TimeSpan.MaxValue) return;
                    err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"done      {p.File} ({Bytes(p.TotalBytes)}) in {elapsed.TotalSeconds:0.0} s, {Bytes(speed)}/s"));
                    _files[p.File] = f with { LastLine = TimeSpan.MaxValue };
                }
                else if (elapsed - f.LastLine >= Every)
                {
                    err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"          {p.File}: {Bytes(p.BytesDone)} of {Bytes(p.TotalBytes)}, {Bytes(speed)}/s"));
                    _files[p.File] = f with { LastLine = elapsed };
                }
            }
        }
    }
}
