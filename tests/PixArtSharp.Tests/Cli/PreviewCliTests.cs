using PixArtSharp.Imaging;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Cli;

/// <summary><c>pixart generate --preview tiny|none --preview-vae --preview-file</c>.</summary>
public sealed class PreviewCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly Loading.TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private static readonly string[] LcmBasic =
        ["generate", "A small cactus with a happy face in the Sahara desert.", "--model", CliRunner.TinyLcm, "--steps", "4", "--guidance", "0",
         "--height", "64", "--width", "96", "--no-resolution-binning", "--seed", "0"];

    private CliResult Run(params string[] args)
    {
        var r = CliRunner.Run(args);
        output.WriteLine($"pixart {string.Join(' ', args)}\n{r}");
        return r;
    }

    /// <summary>--preview-file with --preview-vae DIR: a JPEG (or WebP) of the image's size, and the same PNG as without.</summary>
    [Fact]
    public void PreviewFileIsWrittenAndThePngIsTheSame()
    {
        string plain = _tmp.Path("plain.png"), withPreview = _tmp.Path("preview.png"), jpg = _tmp.Path("frame.jpg"), webp = _tmp.Path("frame.webp");
        Assert.Equal(0, Run([.. LcmBasic, "-o", plain]).ExitCode);
        Assert.Equal(0, Run([.. LcmBasic, "-o", withPreview, "--preview-vae", Fixtures.Path("taesd", "tiny-taesd"), "--preview-file", jpg]).ExitCode);
        Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(withPreview));
        byte[] frame = File.ReadAllBytes(jpg);
        Assert.Equal([0xFF, 0xD8, 0xFF], frame[..3]);   // JPEG
        var img = ImageReader.Decode(frame, "frame");
        Assert.Equal((96, 64), (img.Width, img.Height));
        Assert.Empty(Directory.GetFiles(_tmp.Root, ".*.tmp"));   // written atomically: no temporary left behind

        Assert.Equal(0, Run([.. LcmBasic, "-o", withPreview, "--preview", "tiny", "--preview-vae", Fixtures.Path("taesd", "tiny-taesd"), "--preview-file", webp]).ExitCode);
        Assert.Equal("WEBP", System.Text.Encoding.ASCII.GetString(File.ReadAllBytes(webp), 8, 4));
        Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(withPreview));
        output.WriteLine($"preview JPEG {frame.Length} bytes, WebP {new FileInfo(webp).Length} bytes; PNG identical");
    }

    [Theory]
    [InlineData(new[] { "--preview", "big" }, "--preview must be tiny or none, got 'big'")]
    [InlineData(new[] { "--preview", "none", "--preview-file", "x.jpg" }, "--preview none turns previews off, but --preview-file was given")]
    public void BadPreviewFlagsFailBeforeAnyWork(string[] flags, string message)
    {
        var r = Run([.. LcmBasic, "-o", _tmp.Path("x.png"), .. flags]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(message, r.Stderr);
    }

    /// <summary>
    /// --preview tiny without --preview-vae: the TAESD comes from the Hugging Face cache (madebyollin/taesd for an α/LCM
    /// model), never downloaded; without one there, a clear error. Child processes, each with its own HF_HUB_CACHE.
    /// </summary>
    [Fact]
    public void PreviewTinyFindsTaesdInTheHubCacheOrSaysHowToGetIt()
    {
        string empty = Directory.CreateDirectory(_tmp.Path("empty-cache")).FullName;
        var missing = CliRunner.RunProcess(_tmp.Root, new Dictionary<string, string> { ["HF_HUB_CACHE"] = empty, ["HF_HUB_OFFLINE"] = "1" },
            [.. LcmBasic, "-o", "a.png", "--preview", "tiny"]);
        output.WriteLine(missing.ToString());
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("madebyollin/taesd is not in the Hugging Face cache: give --preview-vae madebyollin/taesd", missing.Stderr);

        // A cache laid out as huggingface_hub writes it: refs/main → the commit, snapshots/<commit>/files.
        string cache = _tmp.Path("hub");
        string repo = Path.Combine(cache, "models--madebyollin--taesd");
        string commit = new('a', 40);
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), commit);
        string snapshot = Directory.CreateDirectory(Path.Combine(repo, "snapshots", commit)).FullName;
        foreach (var f in Directory.GetFiles(Fixtures.Path("taesd", "tiny-taesd")))
            File.Copy(f, Path.Combine(snapshot, Path.GetFileName(f)));
        var found = CliRunner.RunProcess(_tmp.Root, new Dictionary<string, string> { ["HF_HUB_CACHE"] = cache, ["HF_HUB_OFFLINE"] = "1" },
            [.. LcmBasic, "-o", "b.png", "--preview", "tiny"]);
        output.WriteLine(found.ToString());
        Assert.Equal(0, found.ExitCode);
        var img = ImageReader.Read(Path.Combine(_tmp.Root, "b.preview.jpg"));   // the default: beside the image
        Assert.Equal((96, 64), (img.Width, img.Height));
    }
}
