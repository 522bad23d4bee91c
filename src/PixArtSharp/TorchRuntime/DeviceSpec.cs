using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

/// <summary>Which kind of device a <see cref="DeviceSpec"/> names.</summary>
public enum DeviceKind
{
    /// <summary>A GPU when a CUDA libtorch and a GPU are present, else the CPU.</summary>
    Auto,
    /// <summary>The CPU.</summary>
    Cpu,
    /// <summary>An NVIDIA GPU (CUDA).</summary>
    Cuda,
}

/// <summary>
/// A device as the user names it: <c>auto</c> (a GPU when a CUDA libtorch is loaded and a GPU is present, else the
/// CPU), <c>cpu</c>, <c>cuda</c> (GPU 0) or <c>cuda:N</c>. <see cref="Resolve"/> loads libtorch accordingly and
/// returns the TorchSharp device.
/// </summary>
/// <param name="Kind">auto, cpu or cuda.</param>
/// <param name="Index">The GPU's index for cuda:N; null for plain <c>cuda</c> (GPU 0) and for the other kinds.</param>
public readonly record struct DeviceSpec(DeviceKind Kind, int? Index = null)
{
    /// <summary><c>auto</c>: a GPU when one can be used, else the CPU.</summary>
    public static readonly DeviceSpec Auto = new(DeviceKind.Auto);
    /// <summary>The CPU (<c>cpu</c>).</summary>
    public static readonly DeviceSpec Cpu = new(DeviceKind.Cpu);
    /// <summary>GPU 0 (<c>cuda</c>).</summary>
    public static readonly DeviceSpec Cuda = new(DeviceKind.Cuda);

    /// <summary>The accepted spellings, for help texts.</summary>
    public const string Choices = "auto, cpu, cuda or cuda:N";

    /// <summary>Parses <c>auto|cpu|cuda|cuda:N</c> (case-insensitive); ArgumentException (parameter "--device") otherwise.</summary>
    public static DeviceSpec Parse(string? text)
    {
        string s = (text ?? "").Trim().ToLowerInvariant();
        switch (s)
        {
            case "auto": return Auto;
            case "cpu": return Cpu;
            case "cuda" or "gpu": return Cuda;
        }
        if (s.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(s.AsSpan(5), System.Globalization.NumberStyles.None, null, out int n))
            return new DeviceSpec(DeviceKind.Cuda, n);
        throw new ArgumentException($"--device must be {Choices} (N = 0, 1, …), got '{text}'.", "--device");
    }

    /// <summary>
    /// Loads libtorch for this device (<see cref="TorchRuntime.EnsureLoaded(DeviceSpec)"/>) and returns the device
    /// to run on. <c>cuda</c> without a usable GPU throws <see cref="CudaUnavailableException"/> (an ArgumentException:
    /// exit code 2) whose message says why and names both ways to get CUDA.
    /// </summary>
    public Device Resolve()
    {
        TorchRuntime.EnsureLoaded(this);
        switch (Kind)
        {
            case DeviceKind.Cpu:
                return CPU;
            case DeviceKind.Auto:
                if (TorchRuntime.CudaDeviceCount == 0) return CPU;
                TorchRuntime.ConfigureCuda();
                return new Device(DeviceType.CUDA, 0);
            default:
                int count = TorchRuntime.CudaDeviceCount;
                if (count == 0) throw new CudaUnavailableException(this, TorchRuntime.WhyNoCuda());
                int index = Index ?? 0;
                if (index >= count)
                    throw new ArgumentException($"--device {this}: only {count} CUDA device{(count == 1 ? " is" : "s are")} visible (cuda:0{(count > 1 ? $" … cuda:{count - 1}" : "")}).", "--device");
                TorchRuntime.ConfigureCuda();
                return new Device(DeviceType.CUDA, index);
        }
    }

    /// <summary>The spelling <see cref="Parse"/> accepts: auto, cpu, cuda or cuda:N.</summary>
    public override string ToString() => Kind switch
    {
        DeviceKind.Auto => "auto",
        DeviceKind.Cpu => "cpu",
        _ => Index is { } i ? $"cuda:{i}" : "cuda",
    };
}

/// <summary>
/// CUDA was asked for and cannot be had. An ArgumentException, so the CLI exits with code 2 (a usage problem with a
/// fix), and the message names the two ways to get CUDA: the CUDA build and an installed PyTorch.
/// </summary>
public sealed class CudaUnavailableException(DeviceSpec device, string reason) : ArgumentException(Format(device, reason), "--device")
{
    /// <summary>Why CUDA cannot be used (e.g. the loaded libtorch is a CPU build, or no GPU is visible).</summary>
    public string Reason { get; } = reason;

    /// <summary>The two ways to a CUDA libtorch, as one sentence (also for docs and other messages).</summary>
    internal const string HowToGetCuda =
        "To run on an NVIDIA GPU either build with TorchSharp's CUDA natives (`dotnet build -p:TorchBackend=cuda`, or the same for " +
        "publish), or use an installed PyTorch with CUDA: set " + LibTorchLocation.EnvVar + "=<site-packages>/torch/lib, or leave it " +
        "unset and have `python3` import a CUDA torch (found automatically for --device auto|cuda). See docs/gpu.md.";

    private static string Format(DeviceSpec device, string reason) =>
        $"--device {device}: CUDA is not available: {reason}. {HowToGetCuda} Tested libtorch versions: " +
        $"{string.Join(", ", LibTorchLocation.TestedVersions.Select(t => t.Version))}. Or use --device cpu.";
}
