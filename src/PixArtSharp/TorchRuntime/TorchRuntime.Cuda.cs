using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

public static partial class TorchRuntime
{
    /// <summary>Environment switch for cuDNN's benchmark mode on CUDA runs: <c>0</c> turns it off (default on).</summary>
    internal const string CudnnBenchmarkVar = "PIXART_CUDNN_BENCHMARK";

    private static int _cudaConfigured;

    /// <summary>
    /// Waits for the work queued on an asynchronous device (CUDA), so a stopwatch read afterwards measures it; a no-op on
    /// the CPU. The pipeline's stage times and the bench call it.
    /// </summary>
    internal static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA) torch.cuda.synchronize(device);
    }

    /// <summary>
    /// Settings a CUDA run gets once, when <see cref="DeviceSpec.Resolve"/> first returns a GPU: cuDNN's benchmark mode
    /// (<c>torch.backends.cudnn.benchmark = True</c>: each convolution shape is timed once and its fastest algorithm
    /// kept — the VAE decode runs the same few shapes every image; off with PIXART_CUDNN_BENCHMARK=0). TorchSharp has
    /// no binding for it: at::Context::setBenchmarkCuDNN(bool) on at::globalContext(), through libtorch's exported
    /// symbols as <see cref="DisableNnpack"/> does.
    /// </summary>
    internal static void ConfigureCuda()
    {
        if (Interlocked.Exchange(ref _cudaConfigured, 1) == 1) return;
        if (Environment.GetEnvironmentVariable(CudnnBenchmarkVar) != "0") CudnnBenchmark = true;
    }

    /// <summary>
    /// cuDNN's benchmark mode (at::globalContext().benchmarkCuDNN()); false when libtorch does not export the setter.
    /// A flag of libtorch's global context: setting it on a CPU-only libtorch is harmless (no cuDNN reads it).
    /// </summary>
    internal static unsafe bool CudnnBenchmark
    {
        get => EnsureLoadedFirst() && ContextExport("_ZNK2at7Context14benchmarkCuDNNEv") is var (ctx, get) && ((delegate* unmanaged<IntPtr, byte>)get)(ctx) != 0;
        set
        {
            if (EnsureLoadedFirst() && ContextExport("_ZN2at7Context17setBenchmarkCuDNNEb") is var (ctx, set))
                ((delegate* unmanaged<IntPtr, byte, void>)set)(ctx, value ? (byte)1 : (byte)0);
        }
    }

    /// <summary>libtorch loaded (for the CPU unless a device was chosen before), so the symbols looked up are its own.</summary>
    private static bool EnsureLoadedFirst()
    {
        if (!_attempted) EnsureLoaded();
        return true;
    }

    /// <summary>
    /// at::globalContext() and one member function of at::Context from the loaded libtorch_cpu.so, or null when the
    /// symbols are missing. Itanium C++ ABI on x86-64 / arm64: a member function takes <c>this</c> first.
    /// </summary>
    private static unsafe (IntPtr Context, IntPtr Function)? ContextExport(string symbol)
    {
        // The loaded one first (it may be an external libtorch), by its real path.
        foreach (var name in new[] { LoadedLibraryPath("libtorch_cpu.so"), "libtorch_cpu.so", Path.Combine(AppContext.BaseDirectory, "libtorch_cpu.so") })
        {
            if (name is null || !NativeLibrary.TryLoad(name, out var lib)) continue;
            if (NativeLibrary.TryGetExport(lib, "_ZN2at13globalContextEv", out var globalContext) &&
                NativeLibrary.TryGetExport(lib, symbol, out var function))
                return (((delegate* unmanaged<IntPtr>)globalContext)(), function);
        }
        return null;
    }
}
