using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

/// <summary>
/// The one place a <c>--dtype</c> is parsed and named. <c>auto</c> (the default): fp16 on CUDA (the model card's
/// choice; tensor cores), bf16 on CPUs with bf16 instructions (AVX512-BF16 or AMX-BF16: oneDNN's bf16 GEMM is 4–5×
/// fp32 there, measured 530–710 against 110–170 GFLOP/s), else fp32 (bf16 without those instructions is emulated and
/// slower than fp32). fp32 stays the mode whose pixels equal diffusers'.
/// </summary>
public static class DTypeChoice
{
    /// <summary>The accepted spellings, for help texts.</summary>
    public const string Choices = "auto, fp32, bf16 or fp16";

    /// <summary>fp32|float32 / bf16|bfloat16 / fp16|float16 (case-insensitive) → the ScalarType; ArgumentException (parameter "--dtype") otherwise, "auto" included.</summary>
    public static ScalarType Parse(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "fp32" or "float32" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        "fp16" or "float16" => ScalarType.Float16,
        "auto" => throw new ArgumentException("--dtype auto needs the device: use DTypeChoice.Resolve(name, device).", "--dtype"),
        _ => throw new ArgumentException($"--dtype must be {Choices}, got '{name}'.", "--dtype"),
    };

    /// <summary><c>auto</c> → <see cref="Auto(Device)"/>; any other name → <see cref="Parse"/>.</summary>
    public static ScalarType Resolve(string? name, Device device) =>
        (name ?? "").Trim().Equals("auto", StringComparison.OrdinalIgnoreCase) ? Auto(device) : Parse(name);

    /// <summary>Whether <paramref name="name"/> is a valid --dtype (auto included), without needing a device.</summary>
    public static bool IsValid(string? name)
    {
        if ((name ?? "").Trim().Equals("auto", StringComparison.OrdinalIgnoreCase)) return true;
        try { Parse(name); return true; }
        catch (ArgumentException) { return false; }
    }

    /// <summary>fp16 on CUDA; on the CPU bf16 where <see cref="CpuHasFastBf16()"/>, else fp32.</summary>
    public static ScalarType Auto(Device device) => Auto(device.type, CpuHasFastBf16());

    /// <summary>The rule itself, with the CPU's answer given (testable with any CPU).</summary>
    internal static ScalarType Auto(DeviceType device, bool cpuHasFastBf16) => device switch
    {
        DeviceType.CUDA => ScalarType.Float16,
        _ when cpuHasFastBf16 => ScalarType.BFloat16,
        _ => ScalarType.Float32,
    };

    /// <summary>"fp32", "bf16", "fp16" (the names the CLI and the PNG metadata use).</summary>
    public static string Name(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => throw new ArgumentException($"{dtype} is not a model dtype (fp32, bf16 or fp16).", nameof(dtype)),
    };

    private static readonly Lazy<bool> _cpuFastBf16 = new(() =>
    {
        try { return File.Exists("/proc/cpuinfo") && CpuHasFastBf16(FirstFlagsLine(File.ReadLines("/proc/cpuinfo"))); }
        catch (IOException) { return false; }
    });

    /// <summary>This CPU has AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo; false elsewhere).</summary>
    public static bool CpuHasFastBf16() => _cpuFastBf16.Value;

    /// <summary>Whether a /proc/cpuinfo "flags" value lists <c>avx512_bf16</c> or <c>amx_bf16</c> (whole words).</summary>
    internal static bool CpuHasFastBf16(string? cpuinfoFlags)
    {
        if (string.IsNullOrEmpty(cpuinfoFlags)) return false;
        var flags = cpuinfoFlags.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries);
        return flags.Contains("avx512_bf16") || flags.Contains("amx_bf16");
    }

    private static string? FirstFlagsLine(IEnumerable<string> cpuinfo)
    {
        foreach (var line in cpuinfo)
        {
            int colon = line.IndexOf(':');
            if (colon > 0 && line[..colon].Trim() == "flags") return line[(colon + 1)..];
        }
        return null;
    }
}
