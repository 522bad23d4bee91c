using System.CommandLine;
using System.Runtime.InteropServices;
using PixArtSharp.Cli.Bench;
using PixArtSharp.Cli.Download;
using PixArtSharp.Cli.Generate;
using PixArtSharp.Cli.Serve;

namespace PixArtSharp.Cli;

/// <summary>The <c>pixart</c> command. Each sub-command lives in its own folder and exposes <c>Create()</c>.</summary>
public static class Program
{
    public static RootCommand CreateRoot()
    {
        var root = new RootCommand(
            "PixArtSharp: PixArt-α / PixArt-LCM text-to-image in .NET, the same images as diffusers for the same seed.\n\n" +
            "Examples:\n" +
            "  pixart generate \"A small cactus with a happy face in the Sahara desert.\"\n" +
            "  pixart generate \"a cactus\" --model ../shared/fixtures/tiny-pixart-lcm -o cactus.png\n" +
            "  pixart download PixArt-alpha/PixArt-LCM-XL-2-1024-MS\n" +
            "  pixart bench --size 1024 --dtype bf16\n\n" +
            "Exit codes: 0 ok, 1 other failure, 2 bad arguments, 3 model not found or download failed, " +
            "4 corrupt or mismatched weights, 5 out of memory, 130 interrupted.");
        root.Add(CliApp.Verbose);
        root.Add(GenerateCommand.Create());
        root.Add(DownloadCommand.Create());
        root.Add(ServeCommand.Create());
        root.Add(BenchCommand.Create());
        root.Add(Worker.WorkerCommand.Create());
        return root;
    }

    /// <summary>Runs the command line with the given writers (tests) or the process's console.</summary>
    public static int Run(IReadOnlyList<string> args, TextWriter? stdout = null, TextWriter? stderr = null, CancellationToken ct = default) =>
        CliApp.Invoke(CreateRoot(), args, stdout, stderr, ct);

    public static int Main(string[] args)
    {
        // PIXART_LIBTORCH / python3's torch: the process may restart itself once with the library path set (the
        // dynamic loader reads LD_LIBRARY_PATH only at start). Only the real command line allows it, never tests.
        TorchRuntime.AllowRelaunch = true;
        using var cts = new CancellationTokenSource();
        // First Ctrl-C (or SIGTERM): stop after the current step, remove partial files, exit 130. A second Ctrl-C
        // is not intercepted and ends the process at once.
        Console.CancelKeyPress += (_, e) =>
        {
            if (cts.IsCancellationRequested) return;
            e.Cancel = true;
            Console.Error.WriteLine("Interrupting after the current step… (Ctrl-C again to quit at once)");
            cts.Cancel();
        };
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; cts.Cancel(); });
        return Run(args, ct: cts.Token);
    }
}
