using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

public static partial class TorchRuntime
{
    /// <summary>
    /// What the process runs on, for <c>/health</c> and <c>--verbose</c>: which libtorch (version, folder, where it
    /// came from) and what CUDA sees.
    /// </summary>
    /// <param name="LibTorchVersion">"2.10.0", "2.11.0+cu130"; null when no file beside an external libtorch says.</param>
    /// <param name="LibTorchDirectory">The folder the loaded libtorch_cpu.so is in.</param>
    /// <param name="Source">Where the libtorch came from: bundled, PIXART_LIBTORCH, or python3's torch.</param>
    /// <param name="LibTorch">"bundled libtorch-cpu-linux-x64 2.10.0", "PIXART_LIBTORCH", "python3's torch".</param>
    /// <param name="CudaAvailable">Whether the loaded libtorch can use a GPU.</param>
    /// <param name="CudaDeviceCount">GPUs visible to it (0 without CUDA).</param>
    /// <param name="CudaDeviceNames">Per visible GPU, e.g. "NVIDIA H200" (empty without CUDA; "cuda:N" where the driver does not say).</param>
    /// <param name="CpuFastBf16">The CPU has AVX512-BF16 or AMX-BF16 (what --dtype auto picks bf16 on).</param>
    /// <param name="Threads">libtorch's intra-op thread count.</param>
    /// <param name="Note">Why python3's torch was not used, when it was looked at.</param>
    public sealed record Info(string? LibTorchVersion, string LibTorchDirectory, LibTorchSource Source, string LibTorch,
                              bool CudaAvailable, int CudaDeviceCount, IReadOnlyList<string> CudaDeviceNames,
                              bool CpuFastBf16, int Threads, string? Note)
    {
        /// <summary>One line: "cuda:0 (NVIDIA H200) · libtorch 2.11.0+cu130 at /…/torch/lib (PIXART_LIBTORCH)".</summary>
        public string Describe(Device? device = null)
        {
            var sb = new StringBuilder();
            if (device is not null)
            {
                sb.Append(device.type == DeviceType.CUDA
                    ? $"cuda:{Math.Max(device.index, 0)} ({(CudaDeviceNames.Count > Math.Max(device.index, 0) ? CudaDeviceNames[Math.Max(device.index, 0)] : "GPU")})"
                    : $"cpu ({Threads} threads{(CpuFastBf16 ? ", bf16 instructions" : "")})");
                sb.Append(" · ");
            }
            sb.Append(CultureInfo.InvariantCulture, $"libtorch {LibTorchVersion ?? "(version unknown)"} at {LibTorchDirectory} ({LibTorch})");
            sb.Append(CudaAvailable ? $" · CUDA: {CudaDeviceCount} GPU{(CudaDeviceCount == 1 ? "" : "s")}" : " · CUDA: no");
            if (Note is not null) sb.Append(CultureInfo.InvariantCulture, $" · {Note}");
            return sb.ToString();
        }
    }

    private static int? _cudaCount;

    /// <summary>GPUs libtorch can use (0 without a CUDA libtorch or without a GPU). Loads libtorch for the CPU if nothing loaded it yet.</summary>
    public static int CudaDeviceCount
    {
        get
        {
            EnsureLoaded(_attempted ? _loadedFor : DeviceSpec.Cpu);
            lock (_gate)
                return _cudaCount ??= LoadedLibraryPath("libtorch_cuda.so") is null ? 0 : torch.cuda.is_available() ? torch.cuda.device_count() : 0;
        }
    }

    /// <summary>The runtime as loaded (loads libtorch for the CPU if nothing loaded it yet).</summary>
    public static Info GetInfo()
    {
        int count = CudaDeviceCount;
        string? cpuLib = LoadedLibraryPath("libtorch_cpu.so");
        string dir = cpuLib is null ? AppContext.BaseDirectory : Path.GetDirectoryName(cpuLib)!;
        var ext = _external;
        string? version = ext is not null ? ext.Version : BundledVersion();
        string what = ext?.Source switch
        {
            LibTorchSource.Environment => LibTorchLocation.EnvVar,
            LibTorchSource.Python => "python3's torch",
            _ => $"bundled {LibTorchLocation.BundledPackage}",
        };
        var names = Enumerable.Range(0, count).Select(i => CudaDeviceName(i) ?? $"cuda:{i}").ToList();
        return new Info(version, dir, ext?.Source ?? LibTorchSource.Bundled, what, count > 0, count, names,
                        DTypeChoice.CpuHasFastBf16(), torch.get_num_threads(), _note);
    }

    private static string BundledVersion()
    {
        string pkg = LibTorchLocation.BundledPackage;   // "libtorch-cpu-linux-x64 2.10.0"
        int space = pkg.LastIndexOf(' ');
        return space < 0 ? torch.__version__ : pkg[(space + 1)..];
    }

    /// <summary>
    /// Why CUDA cannot be used, for <see cref="CudaUnavailableException"/>: a CPU-only libtorch (and why python3's torch
    /// was not taken), or a CUDA libtorch that sees no GPU.
    /// </summary>
    public static string WhyNoCuda()
    {
        var ext = _external;
        string which = ext is null ? $"the bundled {LibTorchLocation.BundledPackage}" : $"the libtorch {ext}";
        if (LoadedLibraryPath("libtorch_cuda.so") is null && ext is { HasCuda: true })
            return $"{which} has libtorch_cuda.so, but it did not load (its CUDA libraries may be missing: check that `python3 -c \"import torch; print(torch.cuda.is_available())\"` works)";
        if (LoadedLibraryPath("libtorch_cuda.so") is null)
        {
            string why = $"{which} is CPU-only";
            if (_loadedFor.Kind == DeviceKind.Cpu && ext is null)
                why += " (libtorch was loaded for the CPU before CUDA was asked for)";
            else if (_note is not null)
                why += $", and {_note}";
            else if (ext is null && _loadedFor.Kind == DeviceKind.Auto && !LibTorchLocation.NvidiaDriverPresent())
                why += ", and no NVIDIA driver is loaded (no /proc/driver/nvidia/version)";
            return why;
        }
        return $"{which} has CUDA but sees no GPU: check `nvidia-smi`, the NVIDIA driver and CUDA_VISIBLE_DEVICES";
    }

    /// <summary>The GPU's name from the CUDA driver (cuDeviceGetName: a stable C API), or null.</summary>
    private static unsafe string? CudaDeviceName(int ordinal)
    {
        try
        {
            if (!NativeLibrary.TryLoad("libcuda.so.1", out var lib)) return null;
            if (!NativeLibrary.TryGetExport(lib, "cuInit", out var init) ||
                !NativeLibrary.TryGetExport(lib, "cuDeviceGet", out var get) ||
                !NativeLibrary.TryGetExport(lib, "cuDeviceGetName", out var getName)) return null;
            if (((delegate* unmanaged<uint, int>)init)(0) != 0) return null;
            int dev;
            if (((delegate* unmanaged<int*, int, int>)get)(&dev, ordinal) != 0) return null;
            byte* name = stackalloc byte[256];
            if (((delegate* unmanaged<byte*, int, int, int>)getName)(name, 256, dev) != 0) return null;
            return Marshal.PtrToStringUTF8((IntPtr)name);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return null;
        }
    }
}
