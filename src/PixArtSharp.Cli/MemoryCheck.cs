using System.Globalization;
using PixArtSharp.Bench;
using PixArtSharp.Loading;
using static TorchSharp.torch;

namespace PixArtSharp.Cli;

/// <summary>
/// Warns before loading when the model will not fit in the memory this machine has free. On Linux a process that
/// runs out of memory is usually killed by the kernel ("Killed", no message), not given an error we could explain;
/// the T5-XXL alone is 19 GB in fp32. The estimate is weights only (element count from the safetensors headers ×
/// the compute dtype's size): activations add about 1–3 GB at 1024 px.
/// </summary>
internal static class MemoryCheck
{
    private static readonly string[] Components = ["text_encoder", "transformer", "vae"];

    /// <summary>
    /// The warning, or null when the weights fit in <paramref name="availableBytes"/> (MemAvailable by default; no
    /// warning where it is unknown). <paramref name="allLoaded"/>: the components stay loaded together (a server,
    /// several batches); otherwise they are loaded one at a time and the largest one counts.
    /// </summary>
    public static string? Warning(ModelFolder folder, string? variant, ScalarType dtype, bool allLoaded, long? availableBytes = null)
    {
        long? available = availableBytes ?? ProcessStats.MemAvailableBytes;
        if (available is not { } free) return null;
        var sizes = Components.Where(folder.Components.ContainsKey)
            .ToDictionary(c => c, c => folder.ParameterCount(c, variant));
        long Bytes(ScalarType t, long count) => count * (t == ScalarType.Float32 ? 4 : 2);
        long Need(ScalarType t) => allLoaded ? sizes.Values.Sum(n => Bytes(t, n)) : sizes.Values.Select(n => Bytes(t, n)).DefaultIfEmpty(0).Max();
        long need = Need(dtype);
        if (need <= free) return null;

        string what = allLoaded ? "the model's weights" : $"the largest component ({sizes.MaxBy(kv => kv.Value).Key})";
        string advice = dtype == ScalarType.Float32 && Need(ScalarType.BFloat16) <= free
            ? $" Use --dtype bf16 (about {Gb(Need(ScalarType.BFloat16))} GB)."
            : " Close other programs or use a machine with more memory.";
        return $"{what} need about {Gb(need)} GB in {DTypeName(dtype)}, but only {Gb(free)} GB of memory is available: " +
               $"the system may kill the run without a message.{advice}";
    }

    private static string Gb(long bytes) => (bytes / 1e9).ToString("0.0", CultureInfo.InvariantCulture);

    private static string DTypeName(ScalarType t) => t switch { ScalarType.BFloat16 => "bf16", ScalarType.Float16 => "fp16", _ => "fp32" };
}
