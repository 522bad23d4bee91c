using System.Diagnostics;
using System.Globalization;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Support;

/// <summary>What a child process printed and returned.</summary>
public sealed record ChildResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>
/// The test assembly's entry point. The test runner never calls it; <see cref="Run"/> starts
/// <c>dotnet PixArtSharp.Tests.dll --child ROLE args…</c> for checks that can kill the process they run in
/// (a truncated memory-mapped weight file is a SIGBUS, which no exception handler survives) or that measure the
/// process's own peak memory.
/// </summary>
public static class ChildProcess
{
    public static int Main(string[] args)
    {
        if (args.Length < 2 || args[0] != "--child")
        {
            Console.Error.WriteLine("usage: PixArtSharp.Tests.dll --child ROLE [ARGS…] (run the tests with dotnet test)");
            return 2;
        }
        return args[1] switch
        {
            "truncate-forward" => TruncateForward(args[2], args[3] == "copy"),
            "decode-peak" => DecodePeak(int.Parse(args[2], CultureInfo.InvariantCulture), int.Parse(args[3], CultureInfo.InvariantCulture), int.Parse(args[4], CultureInfo.InvariantCulture)),
            "write-random-transformer" => WriteRandomTransformer(args[2]),
            "measure-load" => MeasureLoad(args[2], args[3], args[4] == "bf16" ? ScalarType.BFloat16 : ScalarType.Float32),
            "quantized-linear-first" => QuantizedLinearFirst(),
            _ => 2,
        };
    }

    /// <summary>Runs <c>dotnet PixArtSharp.Tests.dll --child args…</c> and waits for it (3 minutes at most).</summary>
    public static ChildResult Run(params string[] args)
    {
        string dll = typeof(ChildProcess).Assembly.Location;
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add("--child");
        foreach (var a in args) psi.ArgumentList.Add(a);
        // A crash must not write a core dump or a .NET crash report into the test folder.
        psi.Environment["DOTNET_DbgEnableMiniDump"] = "0";
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(entireProcessTree: true); throw new TimeoutException("the child process did not finish in 3 minutes"); }
        return new ChildResult(p.ExitCode, output, err.Result);
    }

    /// <summary>
    /// A Q8_0 × bf16 linear as the process's first matrix product (no oneDNN matmul before it to set AMX up), then a
    /// libtorch matmul, then the linear again, on two threads: prints "ok" and the path taken. A missing AMX permission
    /// or a stale tile configuration is SIGILL/SIGSEGV, which only a separate process survives to report.
    /// </summary>
    private static int QuantizedLinearFirst()
    {
        using var q = PixArtSharp.Tests.Loading.Gguf.GgufTiledLinearTests.RandomBlocks(PixArtSharp.Loading.Gguf.GgmlType.Q8_0, 128, 1024, seed: 3, specialScales: false);
        using var x = randn(25, 1024).to(ScalarType.BFloat16);
        using var first = q.Linear(x, ScalarType.BFloat16);
        using var w = q.Dequantize(ScalarType.BFloat16);
        using var want = nn.functional.linear(x, w);
        using var again = q.Linear(x, ScalarType.BFloat16);
        bool same = Compare.MaxAbsDiff(first, again) == 0 && PixArtSharp.Tests.Loading.Gguf.GgufTiledLinearTests.WithinOneBf16Step(first, want);
        Console.WriteLine($"path {(PixArtSharp.Loading.Gguf.GgmlAmxLinear.IsAvailable ? "amx" : "tiled")}");
        Console.WriteLine(same ? "ok" : "differs");
        return same ? 0 : 3;
    }

    /// <summary>
    /// Loads the tiny DPM transformer from <paramref name="dir"/> (a writable copy), runs the fixture's
    /// <c>same_masks</c> case, truncates the weight file to 4 KiB, and runs it again. Prints both errors against the
    /// fixture and "same" when the second output equals the first. Exit 0 only then.
    /// </summary>
    private static int TruncateForward(string dir, bool copy)
    {
        using var r = new Reference("expected/transformer_dpm");
        using var model = PixArtTransformer2DModel.FromFolder(dir, load: copy ? WeightLoadOptions.Copied : WeightLoadOptions.Default);
        Tensor Forward() => model.forward(r["same_masks.hidden_states"], r["same_masks.encoder_hidden_states"],
            r["same_masks.encoder_attention_mask"], r["same_masks.timestep"], null, null);
        using var expected = r["same_masks.output"];
        using var before = Forward();
        Console.WriteLine($"before: max |Δ| vs fixture = {Compare.MaxAbsDiff(expected, before):E2}");
        using (var fs = new FileStream(Path.Combine(dir, "diffusion_pytorch_model.safetensors"), FileMode.Open, FileAccess.Write))
            fs.SetLength(4096);
        Console.WriteLine("truncated");
        Console.Out.Flush();
        using var after = Forward();
        double d = Compare.MaxAbsDiff(before, after);
        Console.WriteLine($"after: max |Δ| vs before = {d:E2}");
        if (d != 0) return 3;
        Console.WriteLine("same");
        return 0;
    }

    /// <summary>
    /// Writes a <paramref name="side"/>² PNG in memory, then decodes it <paramref name="count"/> times from as many
    /// threads at once with <see cref="PixArtSharp.Imaging.ImageReader.MaxConcurrentDecodes"/> =
    /// <paramref name="maxConcurrent"/>. Prints the RSS before, the peak during (VmHWM, reset after the PNG was
    /// made) and the RSS after (no collection of our own: what ImageReader gave back), in bytes.
    /// </summary>
    private static int DecodePeak(int side, int count, int maxConcurrent)
    {
        byte[] png;
        using (var black = NetVips.Image.Black(side, side, bands: 3))
        using (var grey = black.Linear([1.0], [100.0]))
        using (var u8 = grey.Cast(NetVips.Enums.BandFormat.Uchar))
            png = u8.PngsaveBuffer(compression: 1);
        PixArtSharp.Imaging.ImageReader.MaxConcurrentDecodes = maxConcurrent;
        GC.Collect();
        GC.WaitForPendingFinalizers();
        if (!PixArtSharp.Bench.ProcessStats.ResetPeak()) { Console.WriteLine("cannot reset VmHWM"); return 4; }
        long before = PixArtSharp.Bench.ProcessStats.RssBytes ?? 0;
        using var start = new ManualResetEventSlim();
        long pixels = 0;
        var workers = Enumerable.Range(0, count).Select(_ => new Thread(() =>
        {
            start.Wait();
            var img = PixArtSharp.Imaging.ImageReader.Decode(png, "big.png", maxPixels: 60_000_000);
            Interlocked.Add(ref pixels, (long)img.Width * img.Height);
        })).ToList();
        foreach (var w in workers) w.Start();
        start.Set();
        foreach (var w in workers) w.Join();
        long peak = PixArtSharp.Bench.ProcessStats.PeakRssBytes ?? 0;
        Console.WriteLine($"png_bytes {png.Length}");
        Console.WriteLine($"decoded_pixels {pixels}");
        Console.WriteLine($"rss_before {before}");
        Console.WriteLine($"peak_rss {peak}");
        Console.WriteLine($"rss_after {PixArtSharp.Bench.ProcessStats.RssBytes}");
        return 0;
    }

    /// <summary>The full-size PixArt-LCM transformer (real config) with seeded random bf16 weights, as pixart bench writes it.</summary>
    private static int WriteRandomTransformer(string dir)
    {
        Directory.CreateDirectory(dir);
        string config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, PixArtSharp.Bench.RealConfigs.ReadText("transformer/config.json"));
        var cfg = PixArtTransformerConfig.Load(config);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        using (var w = Weights.Random(PixArtSharp.Bench.RandomModelWriter.TransformerSeed(0), ScalarType.BFloat16,
                   created: (name, t) => tensors[name] = t.alias().DetachFromDisposeScope()))
        using (new PixArtTransformer2DModel(cfg, w)) { }
        SafeTensorsWriter.Write(Path.Combine(dir, "diffusion_pytorch_model.safetensors"), tensors);
        Console.WriteLine($"wrote {tensors.Count} tensors, {tensors.Values.Sum(t => t.NumberOfElements * t.ElementSize)} bytes");
        foreach (var t in tensors.Values) t.Dispose();
        return 0;
    }

    /// <summary>
    /// Loads a transformer folder zero-copy or copied, then reads every weight once (as a first generation does).
    /// Prints the load time, the time to touch every weight, and RSS (anonymous and file-backed) after each.
    /// </summary>
    private static int MeasureLoad(string dir, string mode, ScalarType dtype)
    {
        static string Rss() => string.Join(" ", File.ReadLines("/proc/self/status")
            .Where(l => l.StartsWith("VmRSS", StringComparison.Ordinal) || l.StartsWith("RssAnon", StringComparison.Ordinal) || l.StartsWith("RssFile", StringComparison.Ordinal))
            .Select(l => l.Replace("\t", "").Replace(" kB", "kB").Replace(":", "=").Replace(" ", "")));
        Console.WriteLine($"start: {Rss()}");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var load = mode switch
        {
            "copy" => WeightLoadOptions.Copied,
            "copy-small-check" => new WeightLoadOptions { CopyOnLoad = true },
            _ => WeightLoadOptions.Default,
        };
        using var model = PixArtTransformer2DModel.FromFolder(dir, dtype: dtype, load: load);
        Console.WriteLine($"load_ms {sw.ElapsedMilliseconds} {mode}: {Rss()}");
        sw.Restart();
        // One small forward reads every weight (8×8 latent tokens, 8 caption tokens).
        var cfg = PixArtTransformerConfig.Load(Path.Combine(dir, "config.json"));
        using var scope = NewDisposeScope();
        var outp = model.forward(torch.randn(1, cfg.InChannels!.Value, 16, 16), torch.randn(1, 8, cfg.CaptionChannels!.Value),
            torch.ones(1, 8), torch.tensor(new long[] { 999 }),
            cfg.UseAdditionalConditionsResolved ? torch.tensor(new float[] { 128, 128 }).reshape(1, 2) : null,
            cfg.UseAdditionalConditionsResolved ? torch.ones(1, 1) : null);
        double sum = outp.to(ScalarType.Float32).abs().sum().item<float>();
        Console.WriteLine($"touch_ms {sw.ElapsedMilliseconds} (sum {sum:E3}): {Rss()}");
        return 0;
    }
}
