using PixArtSharp.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Runtime;

public class DeviceAndDTypeTests
{
    [Theory]
    [InlineData("auto", DeviceKind.Auto, null, "auto")]
    [InlineData("CPU", DeviceKind.Cpu, null, "cpu")]
    [InlineData(" cuda ", DeviceKind.Cuda, null, "cuda")]
    [InlineData("cuda:0", DeviceKind.Cuda, 0, "cuda:0")]
    [InlineData("cuda:3", DeviceKind.Cuda, 3, "cuda:3")]
    public void DeviceSpecParses(string text, DeviceKind kind, int? index, string roundTrip)
    {
        var d = DeviceSpec.Parse(text);
        Assert.Equal(kind, d.Kind);
        Assert.Equal(index, d.Index);
        Assert.Equal(roundTrip, d.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("mps")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:x")]
    [InlineData("cpu:0")]
    public void BadDeviceIsAnArgumentErrorNamingTheChoices(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceSpec.Parse(text));
        Assert.Equal("--device", e.ParamName);
        Assert.Contains("auto, cpu, cuda or cuda:N", e.Message);
        Assert.Contains($"'{text}'", e.Message);
        Assert.Equal(ExitCodes.BadArguments, CliApp.ExitCodeFor(e));
    }

    [Fact]
    public void AutoAndCpuResolveToTheCpuHere()
    {
        Assert.Equal(DeviceType.CPU, DeviceSpec.Cpu.Resolve().type);
        Assert.Equal(DeviceType.CPU, DeviceSpec.Auto.Resolve().type);
        Assert.Equal(0, TorchRuntime.CudaDeviceCount);
    }

    [Theory]
    [InlineData("cuda")]
    [InlineData("cuda:1")]
    public void CudaWithoutCudaExitsTwoNamingBothWays(string text)
    {
        var e = Assert.Throws<CudaUnavailableException>(() => DeviceSpec.Parse(text).Resolve());
        Assert.IsAssignableFrom<ArgumentException>(e);
        Assert.Equal(ExitCodes.BadArguments, CliApp.ExitCodeFor(e));
        Assert.StartsWith($"--device {text}: CUDA is not available: ", e.Message);
        Assert.Contains("CPU-only", e.Reason);
        Assert.Contains("-p:TorchBackend=cuda", e.Message);          // way 1: the CUDA build
        Assert.Contains("PIXART_LIBTORCH=<site-packages>/torch/lib", e.Message);   // way 2: an installed PyTorch
        Assert.Contains("python3", e.Message);
        Assert.Contains("2.10.x, 2.11.x", e.Message);
        Assert.Contains("--device cpu", e.Message);
    }

    [Fact]
    public void RuntimeInfoNamesTheBundledLibTorch()
    {
        DeviceSpec.Cpu.Resolve();
        var info = TorchRuntime.GetInfo();
        Assert.Equal(LibTorchSource.Bundled, info.Source);
        Assert.Equal("2.10.0", info.LibTorchVersion);
        Assert.Equal("bundled libtorch-cpu-linux-x64 2.10.0", info.LibTorch);
        Assert.True(File.Exists(Path.Combine(info.LibTorchDirectory, "libtorch_cpu.so")), info.LibTorchDirectory);
        Assert.False(info.CudaAvailable);
        Assert.Empty(info.CudaDeviceNames);
        Assert.Equal(torch.get_num_threads(), info.Threads);
        string line = info.Describe(CPU);
        Assert.StartsWith($"cpu ({info.Threads} threads", line);
        Assert.Contains("libtorch 2.10.0 at ", line);
        Assert.Contains(" · CUDA: no", line);
    }

    // ---- dtype ----

    [Theory]
    [InlineData("fp32", ScalarType.Float32)]
    [InlineData("Float32", ScalarType.Float32)]
    [InlineData("bf16", ScalarType.BFloat16)]
    [InlineData("bfloat16", ScalarType.BFloat16)]
    [InlineData(" FP16 ", ScalarType.Float16)]
    [InlineData("float16", ScalarType.Float16)]
    public void DTypeParses(string name, ScalarType expected)
    {
        Assert.Equal(expected, DTypeChoice.Parse(name));
        Assert.Equal(expected, DTypeChoice.Resolve(name, CPU));
        Assert.True(DTypeChoice.IsValid(name));
    }

    [Theory]
    [InlineData("fp64")]
    [InlineData("")]
    [InlineData("half")]
    public void BadDTypeNamesTheChoices(string name)
    {
        var e = Assert.Throws<ArgumentException>(() => DTypeChoice.Resolve(name, CPU));
        Assert.Equal("--dtype", e.ParamName);
        Assert.Contains("auto, fp32, bf16 or fp16", e.Message);
        Assert.False(DTypeChoice.IsValid(name));
        Assert.Equal(ExitCodes.BadArguments, CliApp.ExitCodeFor(e));
    }

    [Fact]
    public void CudnnBenchmarkIsLibTorchsOwnFlagAndTheVaeRunsChannelsLastOnBothDevices()
    {
        // at::Context::benchmarkCuDNN through libtorch's exported symbols: what is set is what libtorch reads back
        // (the flag exists in a CPU libtorch too; nothing reads it there).
        bool before = TorchRuntime.CudnnBenchmark;
        try
        {
            TorchRuntime.CudnnBenchmark = true;
            Assert.True(TorchRuntime.CudnnBenchmark);
            TorchRuntime.CudnnBenchmark = false;
            Assert.False(TorchRuntime.CudnnBenchmark);
        }
        finally { TorchRuntime.CudnnBenchmark = before; }
        // Channels-last VAE convolutions by default on the CPU (oneDNN) as on CUDA (cuDNN); GPU memory sampling only on CUDA.
        Assert.True(TorchRuntime.VaeChannelsLast(CPU));
        Assert.True(TorchRuntime.VaeChannelsLast(new Device(DeviceType.CUDA, 0)));
        Assert.Null(PixArtSharp.Bench.GpuMemory.TryStart(CPU));
    }

    [Fact]
    public void AutoNeedsTheDevice()
    {
        Assert.Throws<ArgumentException>(() => DTypeChoice.Parse("auto"));
        Assert.True(DTypeChoice.IsValid("AUTO"));
    }

    [Theory]
    [InlineData("fpu vme avx2 avx512f avx512bw avx512_bf16 avx512_fp16", true)]
    [InlineData("fpu avx2 amx_bf16 amx_tile amx_int8", true)]
    [InlineData("fpu avx2 avx512f avx512bw avx512vl", false)]
    [InlineData("avx512_bf16x avx512_bf", false)]     // whole words only
    [InlineData("", false)]
    [InlineData(null, false)]
    public void FastBf16IsAvx512Bf16OrAmx(string? flags, bool expected) =>
        Assert.Equal(expected, DTypeChoice.CpuHasFastBf16(flags));

    [Fact]
    public void AutoRule()
    {
        Assert.Equal(ScalarType.Float16, DTypeChoice.Auto(DeviceType.CUDA, cpuHasFastBf16: false));
        Assert.Equal(ScalarType.Float16, DTypeChoice.Auto(DeviceType.CUDA, cpuHasFastBf16: true));
        Assert.Equal(ScalarType.BFloat16, DTypeChoice.Auto(DeviceType.CPU, cpuHasFastBf16: true));
        Assert.Equal(ScalarType.Float32, DTypeChoice.Auto(DeviceType.CPU, cpuHasFastBf16: false));
    }

    [Fact]
    public void AutoOnThisCpuFollowsItsFlags()
    {
        string flags = File.ReadLines("/proc/cpuinfo").First(l => l.StartsWith("flags", StringComparison.Ordinal));
        bool has = flags.Contains(" avx512_bf16") || flags.Contains(" amx_bf16");
        Assert.Equal(has, DTypeChoice.CpuHasFastBf16());
        Assert.Equal(has ? ScalarType.BFloat16 : ScalarType.Float32, DTypeChoice.Resolve("auto", CPU));
        // These build machines have AVX512-BF16 (dependency-notes.md): auto is bf16 here.
        if (Environment.GetEnvironmentVariable("CI") is null) Assert.True(has, "this machine was expected to have avx512_bf16");
    }

    [Fact]
    public void DTypeNames()
    {
        Assert.Equal("fp32", DTypeChoice.Name(ScalarType.Float32));
        Assert.Equal("bf16", DTypeChoice.Name(ScalarType.BFloat16));
        Assert.Equal("fp16", DTypeChoice.Name(ScalarType.Float16));
        Assert.Throws<ArgumentException>(() => DTypeChoice.Name(ScalarType.Int64));
    }

    // ---- offload ----

    [Theory]
    [InlineData("none", OffloadMode.None)]
    [InlineData("Model", OffloadMode.Model)]
    [InlineData("sequential", OffloadMode.Sequential)]
    public void OffloadParses(string name, OffloadMode mode) => Assert.Equal(mode, OffloadPolicy.Parse(name));

    [Fact]
    public void OffloadErrors()
    {
        var e = Assert.Throws<ArgumentException>(() => OffloadPolicy.Parse("layers"));
        Assert.Equal("--offload", e.ParamName);
        Assert.Contains("none, model or sequential", e.Message);
        Assert.Equal(DeviceType.CPU, new OffloadPolicy(OffloadMode.Model, CPU).LoadDevice.type);
        Assert.Equal(DeviceType.CPU, new OffloadPolicy(OffloadMode.Sequential, CPU).LoadDevice.type);
    }
}
