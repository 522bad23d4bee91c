using System.Diagnostics;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Support;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Cli;

/// <summary>What one <c>pixart</c> invocation printed and returned.</summary>
public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the <c>pixart</c> command in-process (through System.CommandLine, with captured writers) or as a child process.</summary>
public static class CliRunner
{
    /// <summary>
    /// Runs <c>pixart</c> in-process. <c>generate</c> without <c>--dtype</c> or <c>--from-png</c> runs in fp32: the
    /// parity tests compare with diffusers' fp32 images, and the default (auto) is bf16 on this CPU. Tests of the
    /// default pass <c>--dtype auto</c>.
    /// </summary>
    public static CliResult Run(params string[] args)
    {
        args = Fp32UnlessGiven(args);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = PixArtSharp.Cli.Program.Run(args, stdout, stderr);
        return new CliResult(code, stdout.ToString(), stderr.ToString());
    }

    /// <summary><c>generate</c> without <c>--dtype</c> (or <c>--from-png</c>, which records one) gets <c>--dtype fp32</c>.</summary>
    public static string[] Fp32UnlessGiven(string[] args)
    {
        if (args.Length == 0 || args[0] != "generate" || args.Contains("--dtype") || args.Contains("--from-png")) return args;
        int end = Array.IndexOf(args, "--");   // options go before a "--" that starts the prompts
        return end < 0 ? [.. args, "--dtype", "fp32"] : [.. args[..end], "--dtype", "fp32", .. args[end..]];
    }

    /// <summary><c>dotnet pixart.dll args</c> (the CLI assembly copied beside the tests), stdout and stderr piped.</summary>
    public static CliResult RunProcess(string workingDir, IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        string dll = typeof(PixArtSharp.Cli.Program).Assembly.Location;
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workingDir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        psi.ArgumentList.Add(dll);
        foreach (var a in Fp32UnlessGiven(args)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(entireProcessTree: true); throw new TimeoutException("pixart did not finish in 3 minutes"); }
        return new CliResult(p.ExitCode, output, err.Result);
    }

    /// <summary>The fixture's images rounded as diffusers' numpy_to_pil: (x*255).round(), as HWC bytes per image.</summary>
    public static byte[][] ExpectedRgb8(string fixture)
    {
        using var r = new Reference(fixture.Contains('/') ? fixture : "expected/pipeline/" + fixture);
        using var images = r["images"];
        using var bytes = images.mul(255).round().clamp(0, 255).to(ScalarType.Byte);
        return Enumerable.Range(0, (int)bytes.shape[0]).Select(i => { using var b = bytes[i].contiguous(); return b.data<byte>().ToArray(); }).ToArray();
    }

    /// <summary>Max |Δ| between a PNG's pixels and expected HWC bytes, and how many values differ.</summary>
    public static (int MaxDiff, int Differing) ComparePixels(string png, byte[] expected, int width, int height)
    {
        var (w, h, rgb) = PngReader.DecodeRgb8(png);
        Assert.Equal((width, height), (w, h));
        Assert.Equal(expected.Length, rgb.Length);
        int max = 0, differing = 0;
        for (int i = 0; i < rgb.Length; i++)
        {
            int d = Math.Abs(rgb[i] - expected[i]);
            if (d > 0) differing++;
            max = Math.Max(max, d);
        }
        return (max, differing);
    }

    public static string TinyLcm => Fixtures.Path("tiny-pixart-lcm");
    public static string TinyDpm => Fixtures.Path("tiny-pixart");

    /// <summary>A writable copy of a fixture model (to damage or extend).</summary>
    public static string CopyModel(string from, string to)
    {
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            string dst = Path.Combine(to, Path.GetRelativePath(from, f));
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            File.WriteAllBytes(dst, File.ReadAllBytes(f));
        }
        return to;
    }
}
