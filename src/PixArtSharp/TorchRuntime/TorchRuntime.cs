using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

/// <summary>libtorch (TorchSharp's native backend) cannot be loaded on this machine; the message says why and what to do.</summary>
public sealed class TorchUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Loads libtorch once, up front, so a machine that cannot run it gets one clear error instead of a
/// TypeInitializationException from deep inside the first tensor operation.
/// </summary>
public static partial class TorchRuntime
{
    private static readonly object _gate = new();
    private static bool _attempted;
    private static Exception? _error;                 // the first load's failure, thrown by every later call
    private static (Exception Error, string? LoaderError)? _failure;
    private static LibTorchLocation? _external;       // null: the bundled natives
    private static DeviceSpec _loadedFor;
    private static string? _note;                     // why python3's torch was not used, when it was looked at

    /// <summary>
    /// Lets <see cref="EnsureLoaded(DeviceSpec)"/> replace the process by itself (execve, same arguments and streams)
    /// when an external libtorch must be on LD_LIBRARY_PATH from the start. Only an application's Main should set it
    /// (the pixart CLI does); a library host gets a TorchUnavailableException with the LD_LIBRARY_PATH to set instead.
    /// </summary>
    public static bool AllowRelaunch { get; set; }

    /// <summary>Loads libtorch for the CPU (once); throws <see cref="TorchUnavailableException"/> if it cannot be loaded.</summary>
    public static void EnsureLoaded() => EnsureLoaded(DeviceSpec.Cpu);

    /// <summary>
    /// Loads libtorch (once per process: the first call decides which one) for a run on <paramref name="device"/>:
    /// the folder <c>PIXART_LIBTORCH</c> names if set; else for auto/cuda in a build without CUDA natives, python3's
    /// CUDA torch when there is one (<see cref="LibTorchLocation.Choose"/>); else the bundled natives. Throws
    /// <see cref="TorchUnavailableException"/> (cannot load; untested version) or ArgumentException (PIXART_LIBTORCH
    /// names no libtorch). Call it with the run's device before anything else touches TorchSharp.
    /// </summary>
    public static void EnsureLoaded(DeviceSpec device)
    {
        lock (_gate)
        {
            if (!_attempted)
            {
                _attempted = true;
                _loadedFor = device;
                try { Load(device); }
                catch (Exception e) { _error = e; }
            }
        }
        if (_error is not null) throw _error;
        if (_failure is var (e2, loaderError))
            throw new TorchUnavailableException(FormatLoadFailure(e2, loaderError), e2);
    }

    private static void Load(DeviceSpec device)
    {
        var external = LibTorchLocation.Choose(device, out _note);
        if (external is not null)
        {
            external.EnsureTested();
            if (!external.ProcessIsPrepared())
            {
                bool bundledCpu = LibTorchLocation.BundledDirectories().Any(d => File.Exists(Path.Combine(d, "libtorch_cpu.so")));
                if (bundledCpu)
                {
                    // The bundled libtorch_cpu.so beside the app would be found first (see ShimDirectory): the library
                    // path has to be set before the process starts.
                    if (AllowRelaunch && OperatingSystem.IsLinux()) external.Relaunch();
                    throw new TorchUnavailableException(
                        $"To use the libtorch {external}, the process must start with it on the library path: set " +
                        $"LD_LIBRARY_PATH={external.LibraryPath(Environment.GetEnvironmentVariable("LD_LIBRARY_PATH"))} before starting it " +
                        $"(the pixart command does this itself), or unset {LibTorchLocation.EnvVar}.");
                }
                // No bundled natives (an app published without them): loading ours by absolute path first makes the
                // dynamic loader resolve every later request for these sonames to them.
                // The CUDA halves may fail (no CUDA libraries): libtorch then runs on the CPU and WhyNoCuda says so.
                foreach (var (name, required) in new[] { ("libc10.so", true), ("libtorch_cpu.so", true), ("libc10_cuda.so", false), ("libtorch_cuda.so", false), ("libtorch.so", true) })
                {
                    string path = Path.Combine(external.Directory, name);
                    if (!File.Exists(path)) continue;
                    if (!required) { NativeLibrary.TryLoad(path, out _); continue; }
                    try { NativeLibrary.Load(path); }
                    catch (DllNotFoundException e)
                    {
                        throw new TorchUnavailableException($"The libtorch {external} could not be loaded: {FirstLine(e.Message)}", e);
                    }
                }
            }
        }
        _external = external;
        _failure = TryLoad();
        if (_failure is null && external is not null)
        {
            // Trust, but verify: a libtorch from anywhere else would run with mismatched halves.
            string? loaded = LoadedLibraryPath("libtorch_cpu.so");
            // Compared as files (real paths), so a torch/lib of symbolic links (as some distributions ship) passes.
            if (loaded is null || loaded != RealPath(Path.Combine(external.Directory, "libtorch_cpu.so")))
                throw new TorchUnavailableException($"libtorch_cpu.so was loaded from {loaded ?? "nowhere"}, not from the libtorch {external}: start the process with LD_LIBRARY_PATH={external.LibraryPath(null)}.");
        }
    }

    /// <summary>The real path of a loaded shared library of this file name (from /proc/self/maps), or null.</summary>
    internal static string? LoadedLibraryPath(string fileName)
    {
        if (!File.Exists("/proc/self/maps")) return null;
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int slash = line.IndexOf('/');
            if (slash < 0) continue;
            string path = line[slash..].Trim();
            if (Path.GetFileName(path) == fileName) return path;
        }
        return null;
    }

    private static string RealPath(string path)
    {
        string full = Path.GetFullPath(path);
        try { return realpath(full, IntPtr.Zero) is var p && p != IntPtr.Zero ? TakeString(p) : full; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return full; }
    }

    private static string TakeString(IntPtr p)
    {
        try { return Marshal.PtrToStringUTF8(p)!; }
        finally { free(p); }
    }

    [LibraryImport("libc", EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr realpath(string path, IntPtr resolved);
    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void free(IntPtr p);

    /// <summary>
    /// The most intra-op threads accepted: 4 per logical CPU this process may use (at least 4). More threads than
    /// cores only adds contention, and an absurd count (100000) would create threads until the system runs out.
    /// </summary>
    public static int MaxThreads => Math.Max(4, 4 * Environment.ProcessorCount);

    /// <summary>Checks a thread count (1..<see cref="MaxThreads"/>) without loading libtorch: front ends call it while validating input.</summary>
    public static void CheckThreads(int threads)
    {
        if (threads < 1 || threads > MaxThreads)
            throw new ArgumentOutOfRangeException(nameof(threads), threads,
                $"threads must be 1..{MaxThreads} (this machine has {Environment.ProcessorCount} logical CPUs), not {threads}.");
    }

    /// <summary>Sets libtorch's intra-op thread count (the CPU cores one forward pass may use), 1..<see cref="MaxThreads"/>.</summary>
    public static void SetThreads(int threads)
    {
        CheckThreads(threads);
        EnsureLoaded();
        torch.set_num_threads(threads);
    }

    /// <summary>libtorch's intra-op thread count now (loads libtorch if needed); set it with <see cref="SetThreads"/>.</summary>
    public static int Threads
    {
        get { EnsureLoaded(); return torch.get_num_threads(); }
    }

    /// <summary>Environment switch for the VAE's channels-last convolutions: <c>0</c> keeps NCHW (default on).</summary>
    internal const string ChannelsLastVar = "PIXART_VAE_CHANNELS_LAST";

    /// <summary>
    /// Whether the VAE's convolutions run channels-last (NHWC strides, NCHW shape; see <see cref="Models.VaeConv2d"/>):
    /// on unless PIXART_VAE_CHANNELS_LAST=0 (read once per process). Settable for tests, which compare both layouts.
    /// </summary>
    internal static bool VaeChannelsLastEnabled { get; set; } = Environment.GetEnvironmentVariable(ChannelsLastVar) != "0";

    /// <summary>Whether the VAE's convolutions run channels-last on this device: CPU and CUDA, unless switched off.</summary>
    internal static bool VaeChannelsLast(Device device) =>
        VaeChannelsLastEnabled && device.type is DeviceType.CPU or DeviceType.CUDA;

    /// <summary>
    /// Asks libtorch's CPU allocator for transparent huge pages (c10's <c>THP_MEM_ALLOC_ENABLE</c>: allocations of
    /// 2 MB and more are 2 MB-aligned and madvised MADV_HUGEPAGE), unless the user set the variable. Debian's kernels
    /// default to THP "madvise", so without it every fresh activation (a 1024px VAE layer is 256 MB) is faulted in
    /// 4 KB at a time: measured on a 512px VAE decode, 1.24 M page faults and 14.1 s, against 0.10 M and 6.4 s with
    /// it (pixart bench --component vae --size 512). Values are unchanged: only the pages differ. It must be in the
    /// native environment before libtorch's first allocation (c10 reads it once), and .NET's
    /// Environment.SetEnvironmentVariable does not reach the native environment on Unix, hence setenv.
    /// </summary>
    private static void EnableHugePages()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { _ = setenv("THP_MEM_ALLOC_ENABLE", "1", 0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { /* not glibc: leave it */ }
    }

    /// <summary>
    /// Turns NNPACK off, as <c>torch.backends.nnpack.set_flags(False)</c> does in Python (TorchSharp has no binding
    /// for it). libtorch's CPU build asks NNPACK about every eligible fp32 convolution, and on CPUs NNPACK does not
    /// support (this AVX-512 machine) each ask prints "Could not initialize NNPACK! Reason: Unsupported hardware." to
    /// stderr — 15 lines for one small DPM-Solver run. Where NNPACK is unavailable nothing else changes; where it is
    /// available libtorch would use it only for fp32 convolutions of 16 images or more, which PixArtSharp never runs
    /// (the VAE decodes one image at a time). The setter is at::Context::setUserEnabledNNPACK(bool) on
    /// at::globalContext(), called through its exported C++ symbols; if they are missing, nothing is done.
    /// </summary>
    private static unsafe void DisableNnpack()
    {
        if (ContextExport("_ZN2at7Context20setUserEnabledNNPACKEb") is var (context, setEnabled))
            ((delegate* unmanaged<IntPtr, byte, void>)setEnabled)(context, 0);
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int setenv(string name, string value, int overwrite);

    private static (Exception, string?)? TryLoad()
    {
        EnableHugePages();
        // On failure TorchSharp prints its whole probing trace to the console (and puts it in its exception):
        // keep it off the user's terminal; the exception we throw carries it as InnerException.
        var (stdout, stderr) = (Console.Out, Console.Error);
        try
        {
            Console.SetOut(TextWriter.Null);
            Console.SetError(TextWriter.Null);
            torch.InitializeDeviceType(DeviceType.CPU);
            // Touch the native library for real: initialisation alone may succeed lazily.
            using var t = torch.zeros(1);
            DisableNnpack();
            return null;
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or NotSupportedException
                                       or BadImageFormatException or EntryPointNotFoundException or InvalidOperationException)
        {
            return (e, AskTheLoader());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    /// <summary>
    /// TorchSharp's exception lists the paths it probed but not why the dynamic loader refused them; loading
    /// libLibTorchSharp.so ourselves gets the loader's own message (e.g. a missing GLIBCXX version).
    /// </summary>
    private static string? AskTheLoader()
    {
        var dirs = new[] { AppContext.BaseDirectory, Path.GetDirectoryName(typeof(torch).Assembly.Location) }
            .Where(d => !string.IsNullOrEmpty(d)).Select(d => Path.GetFullPath(d!)).Distinct().ToList();
        foreach (var dir in dirs)
        {
            string lib = Path.Combine(dir, "libLibTorchSharp.so");
            if (!File.Exists(lib)) continue;
            try
            {
                NativeLibrary.Free(NativeLibrary.Load(lib));
                return null; // it loads: the cause is elsewhere, and TorchSharp's own message has to do
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                return e.Message;
            }
        }
        return $"libLibTorchSharp.so is not in {string.Join(" or ", dirs)}";
    }

    /// <summary>
    /// Turns the exception chain TorchSharp throws when its native library fails to load into one message:
    /// what failed, the innermost cause (the loader's own words), and the fix for the known causes.
    /// </summary>
    /// <param name="loaderError">The dynamic loader's own message for libLibTorchSharp.so, when known: it is the cause.</param>
    internal static string FormatLoadFailure(Exception e, string? loaderError = null)
    {
        var chain = new List<Exception>();
        for (var x = e; x != null && chain.Count < 32; x = x.InnerException)
            chain.Add(x);
        // The most specific message is the innermost one that says anything beyond a type initialiser failing.
        var innermost = chain.LastOrDefault(x => x is not TypeInitializationException) ?? chain[^1];
        string all = string.Join("\n", chain.Select(x => x.Message).Append(loaderError ?? ""));
        string cause = FirstLine(loaderError ?? innermost.Message);

        var glibcxx = GlibcxxVersion().Match(all);
        string hint;
        if (glibcxx.Success)
            hint = $"The system libstdc++ lacks {glibcxx.Value}, which TorchSharp's libLibTorchSharp.so asks for. " +
                   "Rebuild with `dotnet build` (or `dotnet publish`) so the build step patches the library in the output folder " +
                   "(a project outside the PixArtSharp repository must import PixArtSharp's build/LibTorchSharpPatch.targets), " +
                   "or install a libstdc++ from GCC 13 or newer.";
        else if (all.Contains("GLIBC_", StringComparison.Ordinal))
            hint = "The system C library is older than libtorch needs: use a Linux distribution with glibc 2.28 or newer.";
        else if (all.Contains("libtorch", StringComparison.OrdinalIgnoreCase) && (all.Contains("cannot open shared object", StringComparison.Ordinal) || all.Contains("No such file", StringComparison.Ordinal)))
            hint = "A libtorch native file is missing from the output folder: run `dotnet build` again (the libtorch-cpu-linux-x64 package must be restored), " +
                   $"or use an installed PyTorch: {LibTorchLocation.EnvVar}=<site-packages>/torch/lib.";
        else
            hint = "Check that the libtorch-cpu-linux-x64 package was restored and that this is a 64-bit Linux x64 machine; `dotnet build` again.";

        return $"libtorch could not be loaded (libLibTorchSharp.so and its dependencies): {cause} {hint}";
    }

    private static string FirstLine(string s)
    {
        // .NET's DllNotFoundException starts with generic advice (strace, LD_DEBUG); TorchSharp's exception
        // appends a long probing trace. The loader's complaint is the useful line; else the first line.
        var lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (lines.Length == 0) return s;
        string[] loaderWords = ["not found", "cannot open shared object", "undefined symbol", "wrong ELF class", "is not in "];
        return lines.FirstOrDefault(l => loaderWords.Any(w => l.Contains(w, StringComparison.Ordinal))) ?? lines[0];
    }

    [GeneratedRegex(@"GLIBCXX_\d+(\.\d+)*")]
    private static partial Regex GlibcxxVersion();
}
