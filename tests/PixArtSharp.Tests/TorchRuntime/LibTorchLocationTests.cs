using System.Diagnostics;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Runtime;

/// <summary>
/// Where libtorch comes from. A process loads one libtorch, once, so the loading itself is tested in child processes
/// (tests/PixArtSharp.TorchProbe): PIXART_LIBTORCH pointed at the NuGet cache's CPU libtorch stands in for a GPU
/// machine's &lt;site-packages&gt;/torch/lib.
/// </summary>
public sealed class LibTorchLocationTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _tmp = Directory.CreateTempSubdirectory("pixart-libtorch-").FullName;
    public void Dispose() => Directory.Delete(_tmp, recursive: true);

    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "PixArtSharp.slnx"))) return d.FullName;
        throw new InvalidOperationException("PixArtSharp.slnx not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The NuGet cache's libtorch-cpu-linux-x64 2.10.0 natives (restored by every build).</summary>
    private static string NuGetLibTorch()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string dir = Path.Combine(root, "libtorch-cpu-linux-x64", "2.10.0", "runtimes", "linux-x64", "native");
        Assert.True(File.Exists(Path.Combine(dir, "libtorch_cpu.so")), $"the NuGet CPU libtorch is not at {dir}");
        return dir;
    }

    /// <summary>A folder that looks like a PyTorch wheel's torch/lib of the given version (files empty: never loaded).</summary>
    private string FakeTorchLib(string version, bool cuda = false)
    {
        string torch = Path.Combine(_tmp, "site-packages", $"torch-{version}", "torch");
        string lib = Path.Combine(torch, "lib");
        Directory.CreateDirectory(lib);
        foreach (var f in cuda ? new[] { "libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_cuda.so" } : ["libc10.so", "libtorch_cpu.so", "libtorch.so"])
            File.WriteAllBytes(Path.Combine(lib, f), []);
        File.WriteAllText(Path.Combine(torch, "version.py"),
            $"from typing import Optional\n\n__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = '13.0'\n");
        return lib;
    }

    [Fact]
    public void ReadsTheVersionOfEachLayout()
    {
        var (v, file) = LibTorchLocation.ReadVersion(NuGetLibTorch());
        Assert.Equal("2.10.0", v);
        Assert.EndsWith("libtorch-cpu-linux-x64.nuspec", file);

        Assert.Equal("2.11.0+cu130", LibTorchLocation.ReadVersion(FakeTorchLib("2.11.0+cu130")).Version);

        // A libtorch zip: libtorch/lib beside libtorch/build-version.
        string zip = Path.Combine(_tmp, "libtorch");
        Directory.CreateDirectory(Path.Combine(zip, "lib"));
        File.WriteAllText(Path.Combine(zip, "build-version"), "2.10.0+cu128\n");
        Assert.Equal(("2.10.0+cu128", Path.Combine(zip, "build-version")), LibTorchLocation.ReadVersion(Path.Combine(zip, "lib")));

        Directory.CreateDirectory(Path.Combine(_tmp, "bare", "lib"));
        Assert.Equal((null, null), LibTorchLocation.ReadVersion(Path.Combine(_tmp, "bare", "lib")));
    }

    [Theory]
    [InlineData("2.10.0", true)]
    [InlineData("2.10.1+cpu", true)]
    [InlineData("2.11.0+cu130", true)]
    [InlineData("2.11.0a0+git1234", true)]
    [InlineData("2.9.1+cu128", false)]
    [InlineData("2.12.0", false)]
    [InlineData("1.10.0", false)]
    [InlineData(null, false)]
    public void TestedVersionsAre210And211(string? version, bool tested) => Assert.Equal(tested, LibTorchLocation.IsTested(version));

    [Fact]
    public void AnUntestedVersionIsRefusedByName()
    {
        string lib = FakeTorchLib("2.3.1+cu121", cuda: true);
        var loc = LibTorchLocation.Inspect(lib, LibTorchSource.Environment);
        Assert.True(loc.HasCuda);
        Assert.Equal("2.3.1+cu121", loc.Version);
        var e = Assert.Throws<TorchUnavailableException>(loc.EnsureTested);
        Assert.Contains("2.3.1+cu121", e.Message);
        Assert.Contains(lib, e.Message);
        Assert.Contains("version.py", e.Message);
        Assert.Contains("2.10.x (libtorch-cpu-linux-x64 2.10.0 from NuGet", e.Message);
        Assert.Contains("2.11.x (PyTorch 2.11.0+cu130", e.Message);
        Assert.Contains(LibTorchLocation.AllowUntestedEnvVar, e.Message);

        var unknown = LibTorchLocation.Inspect(FakeTorchLib("x"), LibTorchSource.Environment) with { Version = null, VersionFile = null };
        Assert.Contains("version is unknown", Assert.Throws<TorchUnavailableException>(unknown.EnsureTested).Message);
    }

    [Fact]
    public void AFolderWithoutLibTorchIsAnArgumentError()
    {
        var e = Assert.Throws<ArgumentException>(() => LibTorchLocation.Inspect(_tmp, LibTorchSource.Environment));
        Assert.Contains("PIXART_LIBTORCH=" + _tmp, e.Message);
        Assert.Contains("libtorch_cpu.so", e.Message);
        Assert.Contains("no such folder", Assert.Throws<ArgumentException>(() => LibTorchLocation.Inspect(Path.Combine(_tmp, "nope"), LibTorchSource.Environment)).Message);
    }

    [Fact]
    public void ShimLinksTheUnprefixedNamesAndTheLibraryPathStartsWithIt()
    {
        string lib = FakeTorchLib("2.11.0+cu130", cuda: true);
        var loc = LibTorchLocation.Inspect(lib, LibTorchSource.Environment);
        string shim = loc.ShimDirectory();
        Assert.Equal(Path.Combine(lib, "libtorch_cpu.so"), new FileInfo(Path.Combine(shim, "torch_cpu.so")).LinkTarget);
        Assert.Equal(Path.Combine(lib, "libtorch_cuda.so"), new FileInfo(Path.Combine(shim, "torch_cuda.so")).LinkTarget);
        Assert.Equal(shim, loc.ShimDirectory());   // stable: the same folder for the same libtorch
        Assert.Equal($"{shim}:{lib}:/opt/x", loc.LibraryPath("/opt/x"));
        Directory.Delete(shim, recursive: true);
    }

    [Fact]
    public void PythonWithoutTorchOrWithoutPythonIsNull()
    {
        Assert.Null(LibTorchLocation.FindPythonTorchLib("/nonexistent/python3", TimeSpan.FromSeconds(5)));
        // A python whose torch is the fake wheel above: find_spec reads the path without importing it.
        string lib = FakeTorchLib("2.11.0+cu130", cuda: true);
        string torchDir = Path.GetDirectoryName(lib)!;
        File.WriteAllText(Path.Combine(torchDir, "__init__.py"), "raise ImportError('must not be imported')\n");
        string fakePython = Path.Combine(_tmp, "python-with-torch");
        File.WriteAllText(fakePython, $"#!/bin/sh\nPYTHONPATH={Path.GetDirectoryName(torchDir)} exec python3 \"$@\"\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(fakePython, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Assert.Equal(lib, LibTorchLocation.FindPythonTorchLib(fakePython, TimeSpan.FromSeconds(10)));
    }

    // ───────────────────────── child processes ─────────────────────────

    private static string ProbeDll()
    {
        // tests/PixArtSharp.Tests/bin/<Configuration>/net10.0/linux-x64/ → tests/PixArtSharp.TorchProbe/bin/…
        string here = AppContext.BaseDirectory.TrimEnd('/');
        string probe = here.Replace("/PixArtSharp.Tests/bin/", "/PixArtSharp.TorchProbe/bin/", StringComparison.Ordinal);
        string dll = Path.Combine(probe, "PixArtSharp.TorchProbe.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: build the solution (PixArtSharp.slnx builds tests/PixArtSharp.TorchProbe).");
        return dll;
    }

    private (int Code, Dictionary<string, string> Lines, string Stderr) RunProbe(string device, Dictionary<string, string?> env, string? dll = null)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll ?? ProbeDll());
        psi.ArgumentList.Add(device);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        psi.Environment.Remove("LD_LIBRARY_PATH");
        psi.Environment.Remove("PIXART_LIBTORCH_PREPARED");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(120)), "the probe did not finish in 120 s");
        output.WriteLine(stdout.Result + stderr.Result);
        var lines = stdout.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(l => l.Contains('=')).ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..]);
        return (p.ExitCode, lines, stderr.Result);
    }

    [Fact]
    public void PixArtLibTorchLoadsThatLibTorchInAChildProcess()
    {
        string nuget = NuGetLibTorch();
        var (code, lines, stderr) = RunProbe("auto", new() { ["PIXART_LIBTORCH"] = nuget });
        Assert.True(code == 0, stderr);
        // /proc/self/maps of the child: every libtorch library came from PIXART_LIBTORCH, none from the app folder.
        Assert.Equal(Path.Combine(nuget, "libtorch_cpu.so"), lines["libtorch_cpu"]);
        Assert.Equal(Path.Combine(nuget, "libtorch.so"), lines["libtorch"]);
        Assert.Equal(Path.Combine(nuget, "libc10.so"), lines["libc10"]);
        Assert.Equal("Environment", lines["source"]);
        Assert.Equal("2.10.0", lines["version"]);
        Assert.Equal("cpu", lines["device"]);
        Assert.Equal("3", lines["sum"]);
        Assert.Contains("(PIXART_LIBTORCH)", lines["describe"]);
    }

    /// <summary>
    /// An app published without libtorch natives (tools/gpu-check.sh pack): PIXART_LIBTORCH's files are loaded by
    /// absolute path in-process, no relaunch. The probe's output folder, copied without libtorch and deps.json.
    /// </summary>
    [Fact]
    public void AnAppWithoutNativesLoadsPixArtLibTorchInProcess()
    {
        string nuget = NuGetLibTorch();
        string app = Directory.CreateDirectory(Path.Combine(_tmp, "app")).FullName;
        foreach (var f in Directory.GetFiles(Path.GetDirectoryName(ProbeDll())!))
        {
            string name = Path.GetFileName(f);
            if (name.StartsWith("libtorch", StringComparison.Ordinal) || name.StartsWith("libc10", StringComparison.Ordinal)
                || name.StartsWith("libgomp", StringComparison.Ordinal) || name.EndsWith(".deps.json", StringComparison.Ordinal)) continue;
            File.Copy(f, Path.Combine(app, name));
        }
        var (code, lines, stderr) = RunProbe("cpu", new() { ["PIXART_LIBTORCH"] = nuget }, Path.Combine(app, "PixArtSharp.TorchProbe.dll"));
        Assert.True(code == 0, stderr);
        Assert.Equal(Path.Combine(nuget, "libtorch_cpu.so"), lines["libtorch_cpu"]);
        Assert.Equal(Path.Combine(nuget, "libtorch.so"), lines["libtorch"]);
        Assert.Equal("3", lines["sum"]);

        // Without PIXART_LIBTORCH (and no python3 torch here) it cannot load, and says where to point.
        var (code2, _, stderr2) = RunProbe("cpu", new() { ["PIXART_LIBTORCH"] = null, ["PATH"] = "/usr/local/bin:/usr/bin:/bin" }, Path.Combine(app, "PixArtSharp.TorchProbe.dll"));
        Assert.Equal(3, code2);
        Assert.Contains("PIXART_LIBTORCH=<site-packages>/torch/lib", stderr2);
    }

    [Fact]
    public void WithoutPixArtLibTorchTheBundledOneLoads()
    {
        var (code, lines, stderr) = RunProbe("cpu", new() { ["PIXART_LIBTORCH"] = null });
        Assert.True(code == 0, stderr);
        string appDir = Path.GetDirectoryName(ProbeDll())!;
        Assert.Equal(Path.Combine(appDir, "libtorch_cpu.so"), lines["libtorch_cpu"]);
        Assert.Equal("Bundled", lines["source"]);
    }

    /// <summary>
    /// No PIXART_LIBTORCH, --device cuda: python3 is asked where torch is (here a wrapper whose PYTHONPATH holds a
    /// torch/lib of links to the NuGet CPU libtorch, with a version.py of 2.11.0+cu130 and an unloadable
    /// libtorch_cuda.so), the process relaunches itself with it, loads it, and finds no working CUDA.
    /// </summary>
    [Fact]
    public void Python3sTorchIsFoundForCudaAndLoaded()
    {
        string nuget = NuGetLibTorch();
        string lib = FakeTorchLib("2.11.0+cu130", cuda: true);
        foreach (var f in Directory.GetFiles(nuget, "*.so*"))
        {
            string link = Path.Combine(lib, Path.GetFileName(f));
            if (File.Exists(link) && Path.GetFileName(f) != "libtorch_cuda.so") File.Delete(link);
            if (!File.Exists(link)) File.CreateSymbolicLink(link, f);
        }
        string bin = Directory.CreateDirectory(Path.Combine(_tmp, "bin")).FullName;
        string python = Path.Combine(bin, "python3");
        string sitePackages = Path.GetDirectoryName(Path.GetDirectoryName(lib)!)!;
        File.WriteAllText(python, $"#!/bin/sh\nPYTHONPATH={sitePackages} exec /usr/bin/python3 \"$@\"\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(python, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);

        var (code, lines, stderr) = RunProbe("cuda", new() { ["PIXART_LIBTORCH"] = null, ["PATH"] = $"{bin}:{Environment.GetEnvironmentVariable("PATH")}" });
        Assert.Equal(2, code);
        Assert.Equal(Path.Combine(nuget, "libtorch_cpu.so"), lines["libtorch_cpu"]);   // python3's torch/lib, not the app's
        Assert.Contains("--device cuda: CUDA is not available: the libtorch 2.11.0+cu130 at " + lib + " (python3's torch) has libtorch_cuda.so, but it did not load", stderr);
        Assert.Contains("-p:TorchBackend=cuda", stderr);
    }

    [Fact]
    public void AnUntestedPixArtLibTorchIsRefusedBeforeLoading()
    {
        string lib = FakeTorchLib("2.5.1+cu124", cuda: true);
        var (code, _, stderr) = RunProbe("auto", new() { ["PIXART_LIBTORCH"] = lib });
        Assert.Equal(3, code);
        Assert.Contains("not a tested version", stderr);
        Assert.Contains("2.5.1+cu124", stderr);
        Assert.Contains(lib, stderr);
    }

    [Fact]
    public void APixArtLibTorchWithoutLibTorchIsAnArgumentError()
    {
        var (code, _, stderr) = RunProbe("cpu", new() { ["PIXART_LIBTORCH"] = Path.Combine(_tmp, "missing") });
        Assert.Equal(2, code);
        Assert.Contains("PIXART_LIBTORCH=", stderr);
        Assert.Contains("no such folder", stderr);
    }

    // ───────────────────────── the build switch ─────────────────────────

    private (int Code, string Output) Build(string backend)
    {
        string empty = Directory.CreateDirectory(Path.Combine(_tmp, "no-packages")).FullName;
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        // Restore from an empty source (packages already in the global folder still resolve): the CUDA package is
        // then missing wherever this runs, with no download; obj/ goes to a temporary folder, the checkout's is untouched.
        foreach (var a in new[] { "build", Path.Combine(RepoRoot(), "src", "PixArtSharp", "PixArtSharp.csproj"), "-c", "Release",
                     $"-p:TorchBackend={backend}", $"-p:RestoreSources={empty}", $"-p:BaseIntermediateOutputPath={_tmp}/obj/",
                     $"-p:OutputPath={_tmp}/bin/", "-nologo", "-tl:off" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(180)));
        output.WriteLine(so.Result + se.Result);
        return (p.ExitCode, so.Result + se.Result);
    }

    [Fact]
    public void CudaBuildSwitchFailsHereWithAClearMessage()
    {
        var (code, text) = Build("cuda");
        Assert.NotEqual(0, code);
        Assert.Contains("TorchBackend=cuda restores libtorch-cuda-12.8-linux-x64 2.10.0", text);
        Assert.Contains("NU1101", text);
        Assert.Contains("libtorch-cuda-12.8-linux-x64", text);
        Assert.Contains("PIXART_LIBTORCH=<site-packages>/torch/lib", text);
    }

    [Fact]
    public void AnUnknownTorchBackendIsABuildError()
    {
        var (code, text) = Build("rocm");
        Assert.NotEqual(0, code);
        Assert.Contains("PIXART001", text);
        Assert.Contains("TorchBackend must be cpu (the default) or cuda, got 'rocm'", text);
    }
}
