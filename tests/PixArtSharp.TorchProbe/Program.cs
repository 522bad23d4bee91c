using PixArtSharp;
using TorchSharp;

// Usage: PixArtSharp.TorchProbe [auto|cpu|cuda|cuda:N]
// Prints "key=value" lines: the device, the libtorch in use, where libtorch_cpu.so was mapped from, a tensor sum.
// Exit codes: 0 ok, 2 argument problem (as pixart's), 3 libtorch unavailable.
TorchRuntime.AllowRelaunch = true;   // as the pixart CLI: an external libtorch relaunches with LD_LIBRARY_PATH
try
{
    var spec = DeviceSpec.Parse(args.Length > 0 ? args[0] : "auto");
    var device = spec.Resolve();
    var info = TorchRuntime.GetInfo();
    using var t = torch.ones(3, device: device);
    Console.WriteLine($"device={device}");
    Console.WriteLine($"source={info.Source}");
    Console.WriteLine($"version={info.LibTorchVersion}");
    Console.WriteLine($"directory={info.LibTorchDirectory}");
    Console.WriteLine($"libtorch_cpu={TorchRuntime.LoadedLibraryPath("libtorch_cpu.so")}");
    Console.WriteLine($"libtorch={TorchRuntime.LoadedLibraryPath("libtorch.so")}");
    Console.WriteLine($"libc10={TorchRuntime.LoadedLibraryPath("libc10.so")}");
    Console.WriteLine($"cuda_devices={info.CudaDeviceCount}");
    Console.WriteLine($"dtype_auto={DTypeChoice.Name(DTypeChoice.Auto(device))}");
    Console.WriteLine($"sum={t.sum().cpu().item<float>()}");
    Console.WriteLine($"describe={info.Describe(device)}");
    return 0;
}
catch (ArgumentException e)
{
    // libtorch may be loaded (cuda asked for, CPU libtorch): say which one.
    Console.WriteLine($"libtorch_cpu={TorchRuntime.LoadedLibraryPath("libtorch_cpu.so")}");
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
catch (TorchUnavailableException e) { Console.Error.WriteLine($"error: {e.Message}"); return 3; }
