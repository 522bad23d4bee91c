using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>Page-table work on a file mapping done at load rather than on the first forward.</summary>
internal static unsafe partial class MappedMemory
{
    private const int MadvPopulateRead = 22;   // Linux 5.14+

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Madvise(nint addr, nuint length, int advice);

    /// <summary>
    /// Reads a CPU tensor's pages in and maps them now (<c>madvise(MADV_POPULATE_READ)</c>), so that a GGUF T5's
    /// first forward does not take its ≈ 190 k page faults: the kernel fills the page tables in one pass at load, as
    /// the load of a held checkpoint reads its bytes (the Q8_0 T5-XXL, file in the page cache: ≈ 0.1 s more load,
    /// about as much less first forward). Nothing happens off Linux, on other devices, or where the kernel lacks the
    /// advice (the forward then faults the pages in as before).
    /// </summary>
    public static void Populate(Tensor t)
    {
        if (!OperatingSystem.IsLinux() || t.device_type != DeviceType.CPU || t.numel() == 0) return;
        long page = Environment.SystemPageSize;
        var bytes = t.bytes;
        fixed (byte* p = bytes)
        {
            long start = (long)p, end = start + bytes.Length;
            long aligned = start / page * page;
            _ = Madvise((nint)aligned, (nuint)(end - aligned), MadvPopulateRead);
        }
    }
}
