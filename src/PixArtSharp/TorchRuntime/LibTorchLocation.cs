using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace PixArtSharp;

/// <summary>Where the process's libtorch comes from.</summary>
public enum LibTorchSource
{
    /// <summary>The natives the build copied beside the app (libtorch-cpu-linux-x64, or the CUDA package with -p:TorchBackend=cuda).</summary>
    Bundled,
    /// <summary>The folder named by <c>PIXART_LIBTORCH</c> (a PyTorch install's <c>torch/lib</c>, or a libtorch distribution's <c>lib</c>).</summary>
    Environment,
    /// <summary>The <c>torch/lib</c> of the torch package <c>python3</c> imports (found for <c>--device auto|cuda</c> only).</summary>
    Python,
}

/// <summary>
/// A libtorch folder and what is known about it. TorchSharp 0.107.0's <c>libLibTorchSharp.so</c> is built against
/// libtorch 2.10.0 and links <c>libtorch.so</c>, <c>libc10.so</c> and <c>libtorch_cpu.so</c> by name, so any folder
/// holding an ABI-compatible libtorch can stand in for the bundled one (measured: PyTorch 2.11.0+cu130's own
/// <c>torch/lib</c> ran the whole pipeline on an H200; of the 1,209 symbols libLibTorchSharp.so imports, the 5 that
/// torch 2.11 lacks are linker stubs never called).
/// </summary>
/// <param name="Directory">The folder holding libtorch_cpu.so (full path).</param>
/// <param name="Version">libtorch's version as its files state it ("2.11.0+cu130"), or null when none says.</param>
/// <param name="VersionFile">The file the version was read from, or null.</param>
/// <param name="HasCuda">libtorch_cuda.so is in the folder.</param>
internal sealed partial record LibTorchLocation(LibTorchSource Source, string Directory, string? Version, string? VersionFile, bool HasCuda)
{
    /// <summary>Environment variable naming a libtorch folder to use instead of the bundled one ("bundled" forces the bundled one).</summary>
    public const string EnvVar = "PIXART_LIBTORCH";
    /// <summary>Set to 1 to run a libtorch outside <see cref="TestedVersions"/> anyway (at your own risk).</summary>
    public const string AllowUntestedEnvVar = "PIXART_LIBTORCH_ALLOW_UNTESTED";
    /// <summary>Set by <see cref="TorchRuntime"/> when it relaunches the process with the library path prepared.</summary>
    internal const string PreparedEnvVar = "PIXART_LIBTORCH_PREPARED";

    /// <summary>The libtorch versions PixArtSharp has run, and how (named in every refusal).</summary>
    public static readonly IReadOnlyList<(string Version, string How)> TestedVersions =
    [
        ("2.10.x", "libtorch-cpu-linux-x64 2.10.0 from NuGet, CPU: the whole test suite"),
        ("2.11.x", "PyTorch 2.11.0+cu130 wheel's torch/lib on an NVIDIA H200: the pipeline and fixtures ran (docs/gpu.md)"),
    ];

    /// <summary>The major.minor versions accepted: the ABI TorchSharp's glue links against holds within them.</summary>
    private static readonly string[] TestedMajorMinor = ["2.10", "2.11"];

    public static string TestedVersionsText => string.Join("; ", TestedVersions.Select(t => $"{t.Version} ({t.How})"));

    /// <summary>"2.11.0+cu130 at /…/torch/lib (PIXART_LIBTORCH)".</summary>
    public override string ToString() =>
        $"{Version ?? "unknown version"} at {Directory} ({Source switch { LibTorchSource.Environment => EnvVar, LibTorchSource.Python => "python3's torch", _ => "bundled" }})";

    // ───────────────────────────── reading a folder ─────────────────────────────

    /// <summary>
    /// Describes the libtorch in <paramref name="directory"/>: its version from the file beside it that states one
    /// (a PyTorch wheel's <c>torch/version.py</c>, a libtorch zip's <c>build-version</c> or <c>version.txt</c>, a NuGet
    /// package's <c>.nuspec</c>). Throws ArgumentException naming the folder when it holds no libtorch.
    /// </summary>
    public static LibTorchLocation Inspect(string directory, LibTorchSource source)
    {
        string dir = Path.GetFullPath(directory);
        string what = source == LibTorchSource.Environment ? $"{EnvVar}={directory}" : directory;
        if (!System.IO.Directory.Exists(dir))
            throw new ArgumentException($"{what}: no such folder. Point it at a folder holding libtorch_cpu.so, e.g. <site-packages>/torch/lib of a PyTorch install.");
        if (!File.Exists(Path.Combine(dir, "libtorch_cpu.so")) || !File.Exists(Path.Combine(dir, "libc10.so")))
            throw new ArgumentException($"{what}: the folder has no libtorch_cpu.so and libc10.so. Point it at <site-packages>/torch/lib of a PyTorch install (python3 -c \"import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))\").");
        var (version, file) = ReadVersion(dir);
        return new LibTorchLocation(source, dir, version, file, File.Exists(Path.Combine(dir, "libtorch_cuda.so")));
    }

    /// <summary>The version the files beside a libtorch folder state, and which file said it; (null, null) if none does.</summary>
    public static (string? Version, string? File) ReadVersion(string libDirectory)
    {
        string dir = Path.GetFullPath(libDirectory);
        string parent = Path.GetFullPath(Path.Combine(dir, ".."));
        // PyTorch wheel: torch/lib → torch/version.py: __version__ = '2.11.0+cu130'
        string py = Path.Combine(parent, "version.py");
        if (File.Exists(py) && PyVersion().Match(File.ReadAllText(py)) is { Success: true } m)
            return (m.Groups[1].Value, py);
        // libtorch zip: libtorch/lib → libtorch/build-version ("2.10.0+cu128"); some builds write version.txt.
        foreach (var name in new[] { "build-version", "version.txt" })
        {
            string f = Path.Combine(parent, name);
            if (File.Exists(f) && File.ReadLines(f).FirstOrDefault()?.Trim() is { Length: > 0 } v)
                return (v, f);
        }
        // NuGet package: <id>/<version>/runtimes/<rid>/native → <id>/<version>/<id>.nuspec
        string pkg = Path.GetFullPath(Path.Combine(dir, "..", "..", ".."));
        if (System.IO.Directory.Exists(pkg))
            foreach (var nuspec in System.IO.Directory.EnumerateFiles(pkg, "*.nuspec"))
                if (NuspecVersion().Match(File.ReadAllText(nuspec)) is { Success: true } n)
                    return (n.Groups[1].Value, nuspec);
        return (null, null);
    }

    /// <summary>Whether a version string is one of <see cref="TestedVersions"/> (by major.minor; local suffixes such as +cu130 allowed).</summary>
    public static bool IsTested(string? version)
    {
        if (version is null) return false;
        var m = MajorMinor().Match(version);
        return m.Success && TestedMajorMinor.Contains($"{m.Groups[1].Value}.{m.Groups[2].Value}");
    }

    /// <summary>Throws <see cref="TorchUnavailableException"/> naming the folder, its version and the tested ones, unless tested (or allowed by <see cref="AllowUntestedEnvVar"/>).</summary>
    public void EnsureTested()
    {
        if (IsTested(Version) || System.Environment.GetEnvironmentVariable(AllowUntestedEnvVar) == "1") return;
        string found = Version is null
            ? $"its version is unknown (no torch/version.py, build-version, version.txt or .nuspec beside {Directory})"
            : $"it is libtorch {Version} (from {VersionFile})";
        throw new TorchUnavailableException(
            $"The libtorch at {Directory} ({(Source == LibTorchSource.Python ? "python3's torch" : EnvVar)}) is not a tested version: {found}. " +
            $"Tested: {TestedVersionsText}. Install one of those (e.g. pip install torch==2.11.*), unset {EnvVar} to use the bundled CPU libtorch, " +
            $"or set {AllowUntestedEnvVar}=1 to try it anyway.");
    }

    // ───────────────────────────── finding one ─────────────────────────────

    /// <summary>
    /// The libtorch <c>PIXART_LIBTORCH</c> names, or null when it is unset, empty or "bundled".
    /// Throws ArgumentException if it names no libtorch folder.
    /// </summary>
    public static LibTorchLocation? FromEnvironment()
    {
        string? value = System.Environment.GetEnvironmentVariable(EnvVar);
        if (string.IsNullOrWhiteSpace(value) || value.Trim().Equals("bundled", StringComparison.OrdinalIgnoreCase)) return null;
        return Inspect(value.Trim(), LibTorchSource.Environment);
    }

    private static readonly Lazy<string?> _pythonTorchDir = new(() => FindPythonTorchLib("python3", TimeSpan.FromSeconds(5)));

    /// <summary>python3's torch/lib folder (asked once per process), or null when there is no python3 or no torch.</summary>
    public static string? PythonTorchLib => _pythonTorchDir.Value;

    /// <summary>
    /// Asks <paramref name="python"/> where its torch package is, without importing it: importlib's find_spec reads
    /// the path only (0.35 s wall, 0.07 s CPU measured on a busy 2-core build machine), where <c>import torch</c> takes
    /// seconds and initialises CUDA. Null on any failure
    /// (no python, no torch, timeout).
    /// </summary>
    public static string? FindPythonTorchLib(string python, TimeSpan timeout)
    {
        try
        {
            var psi = new ProcessStartInfo(python)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add("import importlib.util as u; s = u.find_spec('torch'); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')");
            using var p = Process.Start(psi);
            if (p is null) return null;
            var stdout = p.StandardOutput.ReadToEndAsync();
            _ = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(timeout)) { try { p.Kill(); } catch (InvalidOperationException) { } return null; }
            string torchDir = stdout.Result.Trim();
            if (p.ExitCode != 0 || torchDir.Length == 0) return null;
            string lib = Path.Combine(torchDir, "lib");
            return File.Exists(Path.Combine(lib, "libtorch_cpu.so")) ? lib : null;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or IOException or InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>An NVIDIA driver is loaded (a GPU may be usable): the cheap test that gates the python3 look-up for --device auto.</summary>
    public static bool NvidiaDriverPresent() =>
        File.Exists("/proc/driver/nvidia/version") || File.Exists("/dev/nvidia0") || File.Exists("/dev/nvidiactl");

    /// <summary>The bundled natives include libtorch_cuda.so (a -p:TorchBackend=cuda build).</summary>
    public static bool BundledHasCuda() => BundledDirectories().Any(d => File.Exists(Path.Combine(d, "libtorch_cuda.so")));

    /// <summary>"libtorch-cpu-linux-x64 2.10.0" — the natives package this build bundles (assembly metadata written by the build).</summary>
    public static string BundledPackage =>
        typeof(LibTorchLocation).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "PixArtSharp.BundledLibTorch")?.Value ?? "libtorch-cpu-linux-x64 2.10.0";

    internal static IEnumerable<string> BundledDirectories() =>
        new[] { AppContext.BaseDirectory, Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location) }
            .Where(d => !string.IsNullOrEmpty(d)).Select(d => Path.GetFullPath(d!)).Distinct();

    /// <summary>
    /// Which libtorch a process that will run on <paramref name="device"/> should load: <c>PIXART_LIBTORCH</c> when
    /// set (any device); else, for <c>auto</c> and <c>cuda</c> in a build without bundled CUDA natives, python3's torch
    /// when it has CUDA and is a tested version — asked only when an NVIDIA driver is present (auto) or CUDA was
    /// asked for (cuda), so a CPU machine never pays for the look-up; else null (the bundled natives). An app
    /// published without any libtorch natives takes python3's torch for every device.
    /// <paramref name="note"/> says why a python3 torch that was found is not used.
    /// </summary>
    public static LibTorchLocation? Choose(DeviceSpec device, out string? note)
    {
        note = null;
        if (FromEnvironment() is { } env) return env;
        if (System.Environment.GetEnvironmentVariable(EnvVar)?.Trim().Equals("bundled", StringComparison.OrdinalIgnoreCase) == true) return null;
        // Relaunched for python3's torch (Relaunch): the answer is in the environment, no need to ask python3 again.
        if (System.Environment.GetEnvironmentVariable(PreparedEnvVar) is { Length: > 0 } prepared && System.IO.Directory.Exists(prepared))
            return Inspect(prepared, LibTorchSource.Python);
        // An app published without libtorch natives (tools/gpu-check.sh pack) has python3's torch as its only libtorch.
        bool bundled = BundledDirectories().Any(d => File.Exists(Path.Combine(d, "libtorch_cpu.so")));
        if (bundled && (device.Kind == DeviceKind.Cpu || BundledHasCuda())) return null;
        if (bundled && device.Kind == DeviceKind.Auto && !NvidiaDriverPresent()) return null;
        if (PythonTorchLib is not { } lib) { note = "python3 has no torch package"; return null; }
        var found = Inspect(lib, LibTorchSource.Python);
        if (bundled && !found.HasCuda) { note = $"python3's torch at {found.Directory} has no CUDA (libtorch_cuda.so)"; return null; }
        if (!IsTested(found.Version) && System.Environment.GetEnvironmentVariable(AllowUntestedEnvVar) != "1")
        {
            note = $"python3's torch {found.Version ?? "(unknown version)"} at {found.Directory} is not a tested version (tested: {string.Join(", ", TestedVersions.Select(t => t.Version))})";
            return null;
        }
        return found;
    }

    // ───────────────────────────── preparing the process ─────────────────────────────

    /// <summary>
    /// A folder of two symbolic links, <c>torch_cpu.so</c> and <c>torch_cuda.so</c>, to this libtorch's files. Why:
    /// TorchSharp loads libtorch with NativeLibrary.TryLoad("torch_cpu", …), and .NET tries the name variations in
    /// the order <c>torch_cpu.so</c> (app folder, then the loader's search path) before <c>libtorch_cpu.so</c> (app
    /// folder first). The bundled libtorch_cpu.so in the app folder would win, and loading a second libtorch into a
    /// process that already has one aborts ("Tried to register multiple backend fallbacks"). With this folder first
    /// on LD_LIBRARY_PATH the unprefixed variation finds our libtorch before .NET looks for the prefixed one.
    /// </summary>
    public string ShimDirectory()
    {
        string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(Directory)))[..16].ToLowerInvariant();
        string? cache = System.Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(cache))
        {
            string home = System.Environment.GetFolderPath(System.Environment.SpecialFolder.UserProfile);
            cache = string.IsNullOrEmpty(home) ? Path.GetTempPath() : Path.Combine(home, ".cache");
        }
        string shim = Path.Combine(cache, "pixartsharp", "libtorch-shim", hash);
        System.IO.Directory.CreateDirectory(shim);
        foreach (var (link, target) in new[] { ("torch_cpu.so", "libtorch_cpu.so"), ("torch_cuda.so", "libtorch_cuda.so") })
        {
            string linkPath = Path.Combine(shim, link), targetPath = Path.Combine(Directory, target);
            if (!File.Exists(targetPath)) continue;
            var existing = new FileInfo(linkPath);
            if (existing.LinkTarget == targetPath) continue;
            if (existing.Exists || existing.LinkTarget is not null) existing.Delete();
            try { File.CreateSymbolicLink(linkPath, targetPath); }
            catch (IOException) when (new FileInfo(linkPath).LinkTarget == targetPath) { /* another process made it */ }
        }
        return shim;
    }

    /// <summary>The LD_LIBRARY_PATH a process needs to load this libtorch: the shim folder, this folder, then what was there.</summary>
    public string LibraryPath(string? existing)
    {
        string prefix = $"{ShimDirectory()}:{Directory}";
        return string.IsNullOrEmpty(existing) ? prefix : $"{prefix}:{existing}";
    }

    /// <summary>This process was started with the library path this libtorch needs (by <see cref="Relaunch"/> or by hand).</summary>
    public bool ProcessIsPrepared()
    {
        string ld = System.Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "";
        return ld.StartsWith($"{ShimDirectory()}:{Directory}", StringComparison.Ordinal);
    }

    /// <summary>
    /// Replaces this process by itself (same executable, arguments, standard streams and process id) with
    /// LD_LIBRARY_PATH prepared: the dynamic loader reads it only at start. Returns only by throwing.
    /// </summary>
    internal void Relaunch()
    {
        if (System.Environment.GetEnvironmentVariable(PreparedEnvVar) is { Length: > 0 } prepared)
            throw new TorchUnavailableException($"The process was relaunched for the libtorch at {prepared}, but LD_LIBRARY_PATH does not start with {ShimDirectory()}:{Directory}: something between the relaunch and .NET changed it.");
        string[] argv = File.ReadAllText("/proc/self/cmdline").Split('\0');
        if (argv.Length > 0 && argv[^1].Length == 0) argv = argv[..^1];
        var env = new List<string?>();
        foreach (System.Collections.DictionaryEntry e in System.Environment.GetEnvironmentVariables())
        {
            string key = (string)e.Key;
            if (key is "LD_LIBRARY_PATH" or PreparedEnvVar) continue;
            env.Add($"{key}={e.Value}");
        }
        env.Add($"LD_LIBRARY_PATH={LibraryPath(System.Environment.GetEnvironmentVariable("LD_LIBRARY_PATH"))}");
        env.Add($"{PreparedEnvVar}={Directory}");
        env.Add(null);
        Console.Out.Flush();
        Console.Error.Flush();
        _ = execve("/proc/self/exe", [.. argv, null], [.. env]);   // returns only on failure (-1, errno below)
        throw new TorchUnavailableException($"Could not relaunch the process to load the libtorch at {Directory} (execve failed, errno {Marshal.GetLastPInvokeError()}). Start it with LD_LIBRARY_PATH={LibraryPath(null)} instead.");
    }

    // LPStr is UTF-8 on Unix.
    [DllImport("libc", SetLastError = true)]
    private static extern int execve([MarshalAs(UnmanagedType.LPUTF8Str)] string path,
        [MarshalAs(UnmanagedType.LPArray, ArraySubType = UnmanagedType.LPStr)] string?[] argv,
        [MarshalAs(UnmanagedType.LPArray, ArraySubType = UnmanagedType.LPStr)] string?[] envp);

    [GeneratedRegex(@"__version__\s*=\s*['""]([^'""]+)['""]")]
    private static partial Regex PyVersion();
    [GeneratedRegex(@"<version>\s*([^<\s]+)\s*</version>")]
    private static partial Regex NuspecVersion();
    [GeneratedRegex(@"^\s*(\d+)\.(\d+)")]
    private static partial Regex MajorMinor();
}
