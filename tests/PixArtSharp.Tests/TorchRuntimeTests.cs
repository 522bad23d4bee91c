using TorchSharp;

namespace PixArtSharp.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void EnsureLoadedSucceedsHereAndIsIdempotent()
    {
        TorchRuntime.EnsureLoaded();
        TorchRuntime.EnsureLoaded();
        Assert.True(TorchRuntime.Threads >= 1);
        using var t = torch.ones(3);
        Assert.Equal(3f, t.sum().item<float>());
    }

    [Fact]
    public void SetThreadsValidatesAndApplies()
    {
        int current = TorchRuntime.Threads;
        var tooMany = Assert.Throws<ArgumentOutOfRangeException>(() => TorchRuntime.SetThreads(100_000));
        Assert.Equal("threads", tooMany.ParamName);
        Assert.Contains($"1..{TorchRuntime.MaxThreads}", tooMany.Message);
        Assert.Equal(current, TorchRuntime.Threads);
        Assert.Throws<ArgumentOutOfRangeException>(() => TorchRuntime.CheckThreads(TorchRuntime.MaxThreads + 1));
        TorchRuntime.CheckThreads(TorchRuntime.MaxThreads);
        TorchRuntime.CheckThreads(1);
        Assert.Equal("threads", Assert.Throws<ArgumentOutOfRangeException>(() => TorchRuntime.SetThreads(0)).ParamName);
        int before = TorchRuntime.Threads;
        try
        {
            TorchRuntime.SetThreads(1);
            Assert.Equal(1, torch.get_num_threads());
        }
        finally { TorchRuntime.SetThreads(before); }
    }

    [Fact]
    public void GlibcxxFailureNamesTheCauseAndTheFix()
    {
        const string loader = "/app/bin/libLibTorchSharp.so: /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/bin/libLibTorchSharp.so)";
        var chain = new TypeInitializationException("TorchSharp.torch",
            new NotSupportedException("This application or script uses TorchSharp but doesn't contain a reference to libtorch-cpu-linux-x64.",
                new DllNotFoundException("Unable to load shared library 'LibTorchSharp' or one of its dependencies. In order to help diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n" + loader)));
        string m = TorchRuntime.FormatLoadFailure(chain);
        Assert.Contains("libLibTorchSharp.so", m);
        Assert.Contains(loader, m);          // the loader's own words, from the innermost exception
        Assert.Contains("GLIBCXX_3.4.32", m);
        Assert.Contains("dotnet build", m);
        Assert.Contains("GCC 13", m);
        var wrapped = new TorchUnavailableException(m, chain);
        Assert.Same(chain, wrapped.InnerException);
    }

    /// <summary>
    /// The chain TorchSharp 0.107 really throws on Debian 12 without the patch (seen with a throwaway app built
    /// outside the repository): its trace lists probed paths, not the loader's reason, which EnsureLoaded gets
    /// by loading libLibTorchSharp.so itself and passes as loaderError.
    /// </summary>
    [Fact]
    public void RealTorchSharpChainWithTheLoadersOwnErrorNamesTheCause()
    {
        var chain = new TypeInitializationException("TorchSharp.torch", new NotSupportedException(
            "This application or script uses TorchSharp but doesn't contain a reference to libtorch-cpu-linux-x64, Version=2.10.0.0.\n\n" +
            "Consider referencing one of the combination packages TorchSharp-cpu, ... NativeLibrary.Load(path-to-libLibTorchSharp.so) ...\n\n" +
            "Trace from LoadNativeBackend:\n    Failed to load native component LibTorchSharp relative to /app/TorchSharp.dll\n"));
        const string dlerror = "Unable to load shared library '/app/libLibTorchSharp.so' or one of its dependencies. In order to help diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n" +
            "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/libLibTorchSharp.so)";
        string m = TorchRuntime.FormatLoadFailure(chain, dlerror);
        Assert.StartsWith("libtorch could not be loaded (libLibTorchSharp.so and its dependencies): /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found", m);
        Assert.Contains("dotnet build", m);
        Assert.DoesNotContain("strace", m);
        Assert.DoesNotContain("Trace from", m);
        // Without the loader's word, TorchSharp's first line is all there is; the advice stays general.
        string bare = TorchRuntime.FormatLoadFailure(chain);
        Assert.Contains("doesn't contain a reference to libtorch-cpu-linux-x64", bare);
        Assert.DoesNotContain("GLIBCXX", bare);
    }

    [Fact]
    public void OtherFailuresKeepTheInnermostMessageWithAGeneralFix()
    {
        var chain = new TypeInitializationException("TorchSharp.torch", new DllNotFoundException("Unable to load shared library 'libtorch_cpu.so': cannot open shared object file: No such file or directory"));
        string m = TorchRuntime.FormatLoadFailure(chain);
        Assert.Contains("libtorch_cpu.so': cannot open shared object file", m);
        Assert.Contains("dotnet build", m);
        Assert.DoesNotContain("GLIBCXX", m);

        string plain = TorchRuntime.FormatLoadFailure(new TypeInitializationException("TorchSharp.torch", new BadImageFormatException("wrong architecture")));
        Assert.Contains("wrong architecture", plain);
        Assert.Contains("libtorch-cpu-linux-x64", plain);
    }
}
