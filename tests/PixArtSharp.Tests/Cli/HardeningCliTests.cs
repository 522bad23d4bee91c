using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using PixArtSharp.Cli;
using PixArtSharp.Cli.Generate;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Cli;

/// <summary>
/// Issue 15 on the command line: every input checked before work (exit 2), special files refused before a byte is
/// read, broken models named with exit 4, NaN output never saved, and settings from a PNG never naming a path.
/// Each test fails on the code before the fix (said per test).
/// </summary>
public sealed class HardeningCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly PixArtSharp.Tests.Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static readonly string[] Small =
        ["--steps", "2", "--guidance", "0", "--height", "64", "--width", "64", "--no-resolution-binning", "--seed", "3"];

    private CliResult Run(params string[] args)
    {
        var r = CliRunner.Run(args);
        output.WriteLine($"pixart {string.Join(' ', args.Select(a => a.Length > 80 ? a[..80] + "…" : a))}\n{r}");
        return r;
    }

    /// <summary>A copy of the tiny LCM model whose transformer weights are all NaN (written by SafeTensorsWriter).</summary>
    public static string NanModel(string to)
    {
        CliRunner.CopyModel(CliRunner.TinyLcm, to);
        string file = Path.Combine(to, "transformer", "diffusion_pytorch_model.safetensors");
        var tensors = new Dictionary<string, TorchSharp.torch.Tensor>();
        using (var st = SafeTensorsFile.Open(Path.Combine(CliRunner.TinyLcm, "transformer", "diffusion_pytorch_model.safetensors")))
            foreach (var (name, info) in st.Tensors)
                // Finite but huge: the load-time scan (NaN/Inf in small tensors) passes, and the forward overflows
                // to Inf and NaN — what the output checks exist for.
                tensors[name] = TorchSharp.torch.full(info.Shape, 1e38);
        SafeTensorsWriter.Write(file, tensors);
        foreach (var t in tensors.Values) t.Dispose();
        return to;
    }

    // Before: an all-black image and exit 0.
    [Fact]
    public void NanWeightsExit4NamingTheStageAndWriteNoImage()
    {
        string model = NanModel(_tmp.Path("nan-model"));
        string png = _tmp.Path("nan.png");
        var r = Run(["generate", "a cat", "--model", model, "-o", png, .. Small]);
        Assert.Equal(ExitCodes.BadWeights, r.ExitCode);
        Assert.Contains("the final latents hold", r.Stderr);
        Assert.Contains("NaN or infinite", r.Stderr);
        Assert.False(File.Exists(png));
        Assert.Empty(Directory.GetFiles(_tmp.Root, "*.tmp"));
    }

    // Before: --threads 100000 was handed to libtorch (threads until the process table ran out).
    [Fact]
    public void ThreadsBeyondFourPerCoreAreExit2NamingTheBound()
    {
        foreach (var cmd in new[] { "generate", "serve" })
        {
            string[] args = cmd == "generate" ? ["generate", "a cat", "--model", CliRunner.TinyLcm, "--threads", "100000", "-o", _tmp.Path("t.png")] : ["serve", "--model", CliRunner.TinyLcm, "--threads", "100000", "--port", "0"];
            var r = Run(args);
            Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
            Assert.Contains($"--threads must be between 1 and {4 * Environment.ProcessorCount}", r.Stderr);
        }
    }

    // Before: the PNG text chunk refused the NUL after the whole generation (exit 1, no image).
    [Fact]
    public void ControlCharactersInAPromptAreEscapedInTheMetadata()
    {
        string png = _tmp.Path("nul.png");
        var r = Run(["generate", "a cat\0 with\u0007 a hat", "--model", CliRunner.TinyLcm, "-o", png, .. Small]);
        Assert.Equal(0, r.ExitCode);
        var chunks = PngReader.ReadTextChunks(png);
        Assert.StartsWith("a cat\u2400 with\u2407 a hat\n", chunks[0].Text);
        // The JSON record keeps the prompt exactly (JSON escapes control characters itself).
        Assert.Equal("a cat\0 with\u0007 a hat", PixArtSharp.Pipeline.GenerationSettings.FromJson(chunks[1].Text).Prompts[0]);
        Assert.Equal("plain text", PngWriter.SanitizeText("plain text"));
    }

    // Before: the 240-character name failed after generation (its temporary name is 278 bytes).
    [Fact]
    public void AnOutputNameWhoseTemporaryNameCannotFitIsExit2BeforeTheModel()
    {
        string png = _tmp.Path(new string('x', 236) + ".png");
        var r = Run(["generate", "a cat", "--model", "/nonexistent/model", "-o", png, .. Small]);
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode); // not 3: checked before the model is looked for
        Assert.Contains($"at most {OutputNaming.MaxFileNameBytes} fit", r.Stderr);
        // The longest name that fits is written.
        string longest = _tmp.Path(new string('y', OutputNaming.MaxFileNameBytes - 4) + ".png");
        Assert.Equal(0, Run(["generate", "a cat", "--model", CliRunner.TinyLcm, "-o", longest, .. Small]).ExitCode);
        Assert.True(File.Exists(longest));
    }

    [Fact]
    public void SizesTheModelCannotRunAreExit2BeforeTheTextEncoder()
    {
        // 24×24 without binning: the multiple (16) comes from the model's config; Resolve refuses it before T5 runs.
        var r = Run(["generate", "a cat", "--model", CliRunner.TinyLcm, "--height", "24", "--width", "24", "--no-resolution-binning", "-o", _tmp.Path("s.png")]);
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.DoesNotContain("hiddenStates", r.Stderr);
        Assert.DoesNotContain("encode", r.Stderr);
    }

    // Before: /dev/zero was read until memory ran out (exit 5 or never); a FIFO hung on open.
    [Fact]
    public async Task SpecialFilesAreRefusedBeforeReading()
    {
        string fifo = _tmp.Path("fifo");
        using (var mk = Process.Start("mkfifo", [fifo])) mk.WaitForExit();
        Assert.True(File.Exists(fifo));
        string[][] cases =
        [
            ["generate", "a cat", "--image", "/dev/zero", "--model", CliRunner.TinyLcm],
            ["generate", "--prompts-file", "/dev/zero", "--model", CliRunner.TinyLcm],
            ["generate", "--prompts-file", fifo, "--model", CliRunner.TinyLcm],
            ["generate", "a cat", "--image", fifo, "--model", CliRunner.TinyLcm],
            ["generate", "--from-png", fifo, "--model", CliRunner.TinyLcm],
        ];
        foreach (var args in cases)
        {
            // Bounded: a FIFO opened for reading would block this thread forever.
            var r = await Task.Run(() => Run([.. args, "-o", _tmp.Path("special.png")])).WaitAsync(TimeSpan.FromSeconds(20));
            Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
            Assert.Contains("not a regular file", r.Stderr);
        }
    }

    // Before: a prompts file of any size was read whole; a PNG's text chunks of any size were read whole.
    [Fact]
    public void OversizedPromptsFilesAndPngTextChunksAreRefusedWithTheirLimits()
    {
        string prompts = _tmp.WriteText("prompts.txt", string.Concat(Enumerable.Repeat("a cat in a hat\n", 80_000)));
        var r = Run("generate", "--prompts-file", prompts, "--model", CliRunner.TinyLcm, "-o", _tmp.Path("p.png"));
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.Contains($"at most {InputFiles.MaxPromptsFileBytes:N0} are read", r.Stderr);

        // A PNG with a 2 MB text chunk besides pixart's metadata.
        byte[] png = PngWriter.Encode(new byte[8 * 8 * 3], 8, 8, [("pixart-settings", "{}"), ("Comment", new string('z', 2 << 20))]);
        string big = _tmp.Write("big-text.png", png);
        r = Run("generate", "--from-png", big, "--model", CliRunner.TinyLcm, "-o", _tmp.Path("b.png"));
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.Contains($"text chunks of at most {InputFiles.MaxPngTextChunkBytes:N0} bytes are read", r.Stderr);
    }

    // Before: the model, variant and revision recorded in a PNG were used as they were (any path).
    [Fact]
    public void APngNamesNoLocalPathAndNoVariantOutsideTheModel()
    {
        foreach (var (model, variant, what) in new[]
                 {
                     ("/etc", (string?)null, "was made with the local model '/etc'"),
                     ("../../models/x", null, "was made with the local model '../../models/x'"),
                     ("PixArt-alpha/PixArt-LCM-XL-2-1024-MS", "../../x", "records the variant '../../x'"),
                 })
        {
            string json = $"{{\"prompts\":[\"a cat\"],\"seed\":1,\"steps\":2,\"width\":64,\"height\":64,\"model\":\"{model}\",\"dtype\":\"fp32\"" +
                          (variant is null ? "" : $",\"variant\":\"{variant}\"") + "}";
            string png = _tmp.Write($"sent-{Guid.NewGuid():N}.png", PngWriter.Encode(new byte[8 * 8 * 3], 8, 8, [("pixart-settings", json)]));
            var r = Run("generate", "--from-png", png, "-o", _tmp.Path("out.png"));
            Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
            Assert.Contains(what, r.Stderr);
        }
        var v = Run("generate", "a cat", "--variant", "../../x", "--model", CliRunner.TinyLcm, "-o", _tmp.Path("v.png"));
        Assert.Equal(ExitCodes.BadArguments, v.ExitCode);
        Assert.Contains("is not a variant name", v.Stderr);
        Assert.True(InputFiles.IsHubId("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"));
        Assert.False(InputFiles.IsHubId("tiny-pixart-lcm"));
        Assert.False(InputFiles.IsHubId("../x/y"));
    }

    // Before: a corrupt tokenizer exited 1 without naming the file; an unsupported config exited 1.
    [Fact]
    public void BrokenModelFilesExit4NamingTheFile()
    {
        string tok = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("bad-tokenizer"));
        string spiece = Path.Combine(tok, "tokenizer", "spiece.model");
        File.WriteAllBytes(spiece, File.ReadAllBytes(spiece)[..1000]);
        // In a child process, as a user runs it: a corrupt tokenizer must not take the test host with it (in-process,
        // next to the pipeline tests, this run once ended the whole test host).
        var r = CliRunner.RunProcess(_tmp.Root, null, ["generate", "a cat", "--model", tok, "-o", _tmp.Path("t.png"), .. Small]);
        output.WriteLine(r.ToString());
        Assert.Equal(ExitCodes.BadWeights, r.ExitCode);
        Assert.Contains("spiece.model", r.Stderr);

        string cfg = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("bad-config"));
        string config = Path.Combine(cfg, "transformer", "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"ada_norm_single\"", "\"ada_norm_zero\""));
        r = CliRunner.RunProcess(_tmp.Root, null, ["generate", "a cat", "--model", cfg, "-o", _tmp.Path("c.png"), .. Small]);
        output.WriteLine(r.ToString());
        Assert.Equal(ExitCodes.BadWeights, r.ExitCode);
        Assert.Contains("norm_type 'ada_norm_zero' is not supported", r.Stderr);
        Assert.Contains("config.json", r.Stderr);
    }

    // Before: a symlink loop exited 1 with .NET's message and "(run with --verbose …)".
    [Fact]
    public void ASymlinkLoopInTheModelIsExit3WithAClearMessage()
    {
        string model = CliRunner.CopyModel(CliRunner.TinyLcm, _tmp.Path("loop"));
        string a = Path.Combine(model, "vae", "config.json");
        File.Delete(a);
        File.CreateSymbolicLink(a, Path.Combine(model, "vae", "loop2.json"));
        File.CreateSymbolicLink(Path.Combine(model, "vae", "loop2.json"), a);
        var r = Run(["generate", "a cat", "--model", model, "-o", _tmp.Path("l.png"), .. Small]);
        Assert.True(r.ExitCode is ExitCodes.ModelNotFound or ExitCodes.BadWeights, r.ToString());
        Assert.StartsWith("error: ", r.Stderr);
        Assert.Contains("config.json", r.Stderr);
        Assert.DoesNotContain("--verbose", r.Stderr);
    }

    // Before: the port was bound after the model loaded, and a taken one failed with a stack trace.
    [Fact]
    public void ServeOnATakenPortExits2AtOnceWithOneLine()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var clock = Stopwatch.StartNew();
        var r = Run("serve", "--model", CliRunner.TinyLcm, "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(ExitCodes.BadArguments, r.ExitCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains($"127.0.0.1:{port} is already in use", lines[0]);
        Assert.DoesNotContain("loading", r.Stderr);
    }

    [Fact]
    public void AGuidanceOfMinusZeroIsRecordedAsZero()
    {
        string png = _tmp.Path("g.png");
        var r = Run(["generate", "a cat", "--model", CliRunner.TinyLcm, "-o", png, "--steps", "2", "--guidance", "-0", "--height", "64", "--width", "64", "--no-resolution-binning", "--seed", "3"]);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("guidance 0,", r.Stderr);
        Assert.Contains("CFG scale: 0,", PngReader.ReadTextChunks(png)[0].Text);
        Assert.DoesNotContain("-0", PngReader.ReadTextChunks(png)[1].Text.Replace("-0.", "", StringComparison.Ordinal));
    }
}
