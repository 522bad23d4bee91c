using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Bench;

/// <summary>
/// Peak GPU memory in use, sampled every 2 ms from NVML (the NVIDIA driver's management library,
/// <c>libnvidia-ml.so.1</c>): TorchSharp 0.107 has no binding for <c>torch.cuda.max_memory_allocated</c>. NVML counts
/// the whole device — the CUDA context, and the blocks libtorch's caching allocator keeps after tensors are freed —
/// so a stage's figure includes what earlier stages left cached; with PYTORCH_NO_CUDA_MEMORY_CACHING=1 libtorch
/// returns freed memory at once and each stage's figure is its own (slower: every free waits for the GPU).
/// The device index is NVML's, equal to CUDA's unless CUDA_VISIBLE_DEVICES reorders them.
/// </summary>
internal sealed partial class GpuMemory : IDisposable
{
    [StructLayout(LayoutKind.Sequential)]
    private struct NvmlMemory { public ulong Total, Free, Used; }

    [LibraryImport("libnvidia-ml.so.1")] private static partial int nvmlInit_v2();
    [LibraryImport("libnvidia-ml.so.1")] private static partial int nvmlDeviceGetHandleByIndex_v2(uint index, out IntPtr device);
    [LibraryImport("libnvidia-ml.so.1")] private static partial int nvmlDeviceGetMemoryInfo(IntPtr device, out NvmlMemory memory);

    private readonly IntPtr _device;
    private readonly Thread _sampler;
    private volatile bool _stop;
    private long _peak;

    private GpuMemory(IntPtr device)
    {
        _device = device;
        BaselineBytes = Used();
        _peak = BaselineBytes;
        TotalBytes = nvmlDeviceGetMemoryInfo(_device, out var m) == 0 ? (long)m.Total : 0;
        _sampler = new Thread(Sample) { IsBackground = true, Name = "pixart-gpu-memory" };
        _sampler.Start();
    }

    /// <summary>Device memory in use when sampling started (other processes, this process's CUDA context).</summary>
    public long BaselineBytes { get; }

    /// <summary>The device's memory.</summary>
    public long TotalBytes { get; }

    /// <summary>Starts sampling a CUDA device; null on the CPU or where NVML cannot be loaded (no NVIDIA driver).</summary>
    public static GpuMemory? TryStart(Device device)
    {
        if (device.type != DeviceType.CUDA) return null;
        try
        {
            if (nvmlInit_v2() != 0) return null;
            if (nvmlDeviceGetHandleByIndex_v2((uint)Math.Max(0, (int)device.index), out var handle) != 0) return null;
            return new GpuMemory(handle);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    /// <summary>The most memory in use since the last call (or the start); the next period starts at the current use.</summary>
    public long TakePeak()
    {
        long now = Used();
        long peak = Math.Max(Interlocked.Exchange(ref _peak, now), now);
        return peak;
    }

    private long Used() => nvmlDeviceGetMemoryInfo(_device, out var m) == 0 ? (long)m.Used : 0;

    private void Sample()
    {
        while (!_stop)
        {
            long used = Used();
            long seen;
            while (used > (seen = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, used, seen) != seen) { }
            Thread.Sleep(2);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _sampler.Join();
    }
}
