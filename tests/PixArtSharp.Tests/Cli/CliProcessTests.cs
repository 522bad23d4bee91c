using System.Text.Json;
using PixArtSharp.Cli;
using PixArtSharp.Imaging;
using PixArtSharp.Tests.Hub;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Cli;

/// <summary>
/// The real executable (<c>dotnet pixart.dll</c>) as a user runs it, output piped: seed parity, plain progress
/// lines, and the Hub path end to end against <see cref="FakeHub"/> (download, then an offline run from the cache).
/// </summary>
public sealed class CliProcessTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private CliResult Run(IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        var r = CliRunner.RunProcess(_tmp.Root, env, args);
        output.WriteLine($"pixart {string.Join(' ', args)}\n{r}");
        return r;
    }

    [Fact]
    public void ChildProcessMatchesDiffusersWithPlainOutput()
    {
        var r = Run(null, "generate", "A small cactus with a happy face in the Sahara desert.", "--model", CliRunner.TinyLcm,
            "--steps", "4", "--guidance", "0", "--height", "64", "--width", "96", "--no-resolution-binning", "--seed", "0", "-o", "cactus.png");
        Assert.Equal(0, r.ExitCode);
        string png = Path.Combine(_tmp.Root, "cactus.png");
        var (max, differing) = CliRunner.ComparePixels(png, CliRunner.ExpectedRgb8("lcm_basic")[0], 96, 64);
        output.WriteLine($"child process lcm_basic: max pixel |Δ| {max}, {differing} values differ");
        Assert.True(max <= 1);
        Assert.False((r.Stderr + r.Stdout).Contains('\u001b'), "ANSI escape in piped output");
        Assert.Contains("denoise  step 4/4", r.Stderr);
        Assert.Equal($"Saved {png} (seed 0)", r.Stdout.Trim());

        var bad = Run(null, "generate", "a cat", "--steps", "-3");
        Assert.Equal(ExitCodes.BadArguments, bad.ExitCode);
    }

    [Fact]
    public void LibtorchPrintsNothingOfItsOwnOnStderr()
    {
        // A guided DPM-Solver++ run in fp32: without TorchRuntime turning NNPACK off, libtorch printed
        // "Could not initialize NNPACK! Reason: Unsupported hardware." 15 times on this machine.
        var r = Run(null, "generate", "a cactus", "--model", CliRunner.TinyDpm, "--steps", "3", "--height", "128", "--width", "128",
            "--no-resolution-binning", "--seed", "3", "-o", "dpm.png");
        Assert.Equal(0, r.ExitCode);
        Assert.DoesNotContain("NNPACK", r.Stderr);
        Assert.DoesNotContain("[W", r.Stderr);
    }

    [Fact]
    public void DownloadThenGenerateOfflineFromTheCache()
    {
        string repo = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("repo"));
        using var hub = new FakeHub(repo);
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint, ["HF_HUB_CACHE"] = _tmp.Path("cache"), ["HF_TOKEN"] = "" };

        var download = Run(env, "download", hub.RepoId);
        Assert.Equal(0, download.ExitCode);
        string snapshot = Path.Combine(_tmp.Path("cache"), "models--test-org--tiny-pixart-lcm", "snapshots", hub.Commit);
        Assert.Equal(snapshot, download.Stdout.Trim());
        Assert.Contains("download  transformer/diffusion_pytorch_model.safetensors", download.Stderr);
        Assert.Contains("done      transformer/diffusion_pytorch_model.safetensors", download.Stderr);
        Assert.Contains("/s", download.Stderr);

        // Offline: served from the cache; the PNG records the Hub id and the commit.
        hub.Stop();
        var offline = new Dictionary<string, string>(env) { ["HF_HUB_OFFLINE"] = "1" };
        var gen = Run(offline, "generate", "a cat", "--model", hub.RepoId, "--steps", "1", "-H", "16", "-W", "16", "--no-resolution-binning", "-o", "cat.png", "--json", "--seed", "5");
        Assert.Equal(0, gen.ExitCode);
        using var json = JsonDocument.Parse(gen.Stdout);
        Assert.Equal(hub.Commit, json.RootElement.GetProperty("model_revision").GetString());
        var parameters = PngReader.ReadTextChunks(Path.Combine(_tmp.Root, "cat.png"))[0].Text;
        Assert.Contains($"Model: {hub.RepoId}, Model revision: {hub.Commit}", parameters);

        // A model that is neither cached nor a folder: exit 3 with the cache named.
        var missing = Run(offline, "generate", "a cat", "--model", "test-org/not-there");
        Assert.Equal(ExitCodes.ModelNotFound, missing.ExitCode);
        Assert.Contains("HF_HUB_OFFLINE", missing.Stderr);
    }
}
