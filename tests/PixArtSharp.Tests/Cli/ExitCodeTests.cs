using System.Runtime.InteropServices;
using PixArtSharp.Cli;
using PixArtSharp.Hub;
using PixArtSharp.Loading;

namespace PixArtSharp.Tests.Cli;

/// <summary>The one mapping from what went wrong to the process exit code (README "Exit codes").</summary>
public class ExitCodeTests
{
    [Fact]
    public void EachKindOfFailureHasItsExitCode()
    {
        Assert.Equal(2, CliApp.ExitCodeFor(new UsageException("x")));
        Assert.Equal(2, CliApp.ExitCodeFor(new ArgumentException("steps must be between 1 and 1000, got 0.", "steps")));
        Assert.Equal(3, CliApp.ExitCodeFor(new ModelNotFoundException("x")));
        Assert.Equal(3, CliApp.ExitCodeFor(new HubDownloadException(HubErrorKind.Network, "a/b", null, "x")));
        Assert.Equal(3, CliApp.ExitCodeFor(new HubDownloadException(HubErrorKind.Checksum, "a/b", "f", "x")));
        Assert.Equal(4, CliApp.ExitCodeFor(new WeightFileException("x")));
        Assert.Equal(5, CliApp.ExitCodeFor(new OutOfMemoryException()));
        // libtorch's CPU allocator, as TorchSharp surfaces it
        Assert.Equal(5, CliApp.ExitCodeFor(new ExternalException("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes.")));
        Assert.Equal(130, CliApp.ExitCodeFor(new OperationCanceledException()));
        Assert.Equal(1, CliApp.ExitCodeFor(new TorchUnavailableException("x")));
        Assert.Equal(1, CliApp.ExitCodeFor(new IOException("disk full")));
        // Issue 15: a model that cannot be read is "not there" (3); one that is there but broken is 4.
        Assert.Equal(3, CliApp.ExitCodeFor(new IOException("Too many levels of symbolic links : '/m/vae/config.json'")));
        Assert.Equal(3, CliApp.ExitCodeFor(new UnauthorizedAccessException("Access to the path '/m/vae/config.json' is denied.")));
        Assert.Equal(4, CliApp.ExitCodeFor(new NotSupportedException("/m/transformer/config.json: norm_type 'x' is not supported")));
        Assert.Equal(4, CliApp.ExitCodeFor(new InvalidDataException("spiece.model: unsupported protobuf wire type.")));
        Assert.Equal(4, CliApp.ExitCodeFor(new PixArtSharp.Loading.NonFiniteOutputException("the final latents", "x")));
        Assert.Equal(1, CliApp.ExitCodeFor(new PixArtSharp.Imaging.ImageWriteException("x")));
    }
}
