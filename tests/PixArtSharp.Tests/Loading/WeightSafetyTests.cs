using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

/// <summary>Weights a long-lived process keeps must survive their file changing; broken weights are refused at load.</summary>
public class WeightSafetyTests(ITestOutputHelper output)
{
    private static string CopyTransformer(TempDir dir)
    {
        string src = Fixtures.Path("tiny-pixart", "transformer");
        string dst = dir.Path("transformer");
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        return dst;
    }

    [Fact]
    public void CopiedWeightsSurviveTheFileBeingTruncatedUnderTheProcess()
    {
        using var dir = new TempDir();
        var r = ChildProcess.Run("truncate-forward", CopyTransformer(dir), "copy");
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("same", r.Stdout);
        // The output before the truncation matches diffusers (README: atol 1e-5).
        var before = double.Parse(r.Stdout.Split('\n').First(l => l.StartsWith("before:", StringComparison.Ordinal)).Split('=')[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(before <= 1e-5, r.Stdout);
    }

    /// <summary>The hazard the copy removes: zero-copy views of a truncated file kill the process (SIGBUS).</summary>
    [Fact]
    public void ZeroCopyWeightsDieWhenTheFileIsTruncated()
    {
        using var dir = new TempDir();
        var r = ChildProcess.Run("truncate-forward", CopyTransformer(dir), "map");
        output.WriteLine(r.ToString());
        Assert.Contains("truncated", r.Stdout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.DoesNotContain("same", r.Stdout);
    }

    private static string Checkpoint(TempDir dir, string name = "w.safetensors")
    {
        string path = dir.Path(name);
        using var a = torch.arange(0f, 12f).reshape(3, 4);
        using var b = torch.ones(4);
        SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["a"] = a, ["b"] = b });
        return path;
    }

    [Fact]
    public void CopiedTensorsAreOwnedAndEqualToTheViews()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var mapped = Weights.FromFiles([path], ScalarType.Float32);
        using var copied = Weights.FromFiles([path], ScalarType.Float32, load: WeightLoadOptions.Copied);
        using var v = mapped.Get("a", 3, 4);
        using var c = copied.Get("a", 3, 4);
        Assert.Equal(v.data<float>().ToArray(), c.data<float>().ToArray());
        using var b = copied.Get("b", 4);
        // Copies outlive the file: deleting and recreating it as garbage changes nothing.
        File.Delete(path);
        File.WriteAllBytes(path, new byte[16]);
        Assert.Equal(11f, c[2, 3].item<float>());
    }

    [Fact]
    public void AFileTruncatedAfterOpenIsNamedAtTheNextLoad()
    {
        foreach (var load in new[] { WeightLoadOptions.Default, WeightLoadOptions.Copied })
        {
            using var dir = new TempDir();
            string path = Checkpoint(dir);
            using var w = Weights.FromFiles([path], ScalarType.Float32, load: load);
            using (var a = w.Get("a", 3, 4)) { }
            using (var fs = new FileStream(path, FileMode.Open, FileAccess.Write)) fs.SetLength(fs.Length - 8);
            var e = Assert.Throws<WeightFileException>(() => w.Get("b", 4));
            Assert.Contains(path, e.Message);
            Assert.Contains("changed while it was open", e.Message);
        }
    }

    [Fact]
    public void AFileRewrittenWithTheSameLengthIsNamedAtTheNextLoad()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes);
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(5));
        var e = Assert.Throws<WeightFileException>(() => w.Get("a", 3, 4));
        Assert.Contains(path, e.Message);
        Assert.Contains("modified", e.Message);
    }

    [Fact]
    public void FileStampsNameTheFirstChangedFile()
    {
        using var dir = new TempDir();
        string a = Checkpoint(dir, "a.safetensors"), b = Checkpoint(dir, "b.safetensors");
        var stamps = FileStamps.Capture([a, b]);
        stamps.CheckUnchanged();
        Assert.Null(stamps.FindChanged());
        using (var fs = new FileStream(b, FileMode.Open, FileAccess.Write)) fs.SetLength(10);
        var e = Assert.Throws<WeightFileException>(stamps.CheckUnchanged);
        Assert.Contains(b, e.Message);
        Assert.Contains("now 10", e.Message);
        File.Delete(a);
        Assert.Equal(a, stamps.FindChanged()!.Value.Path);
    }

    [Fact]
    public void ModelFolderListsTheWeightFilesItLoads()
    {
        var folder = ModelFolder.Open(Fixtures.Path("tiny-pixart"));
        var files = folder.WeightFiles(null).Select(f => Path.GetRelativePath(folder.Root, f)).Order().ToList();
        Assert.Equal(["text_encoder/model.safetensors", "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"], files);
    }

    /// <summary>An F32 tensor relabelled I32 in the header passes every size check; the dtype check names it.</summary>
    [Fact]
    public void AnIntegerTensorWhereAFloatWeightIsExpectedIsRefused()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        byte[] bytes = File.ReadAllBytes(path);
        string header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)BitConverter.ToUInt64(bytes, 0));
        string relabelled = header.Replace("\"a\":{\"dtype\":\"F32\"", "\"a\":{\"dtype\":\"I32\"");
        Assert.NotEqual(header, relabelled);
        System.Text.Encoding.UTF8.GetBytes(relabelled).CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        foreach (var load in new[] { WeightLoadOptions.Default, WeightLoadOptions.Copied })
        {
            using var w = Weights.FromFiles([path], ScalarType.BFloat16, load: load);
            var e = Assert.Throws<WeightFileException>(() => w.Get("a", 3, 4));
            Assert.Contains(path, e.Message);
            Assert.Contains("'a'", e.Message);
            Assert.Contains("I32", e.Message);
            using var b = w.Get("b", 4);   // the others load
        }
    }

    [Fact]
    public void NonFiniteWeightsAreRefusedAtLoad()
    {
        using var dir = new TempDir();
        string path = dir.Path("w.safetensors");
        using (var big = torch.zeros(300, 300))
        using (var small = torch.ones(8))
        {
            big[299, 299] = torch.tensor(float.PositiveInfinity);
            small[3] = torch.tensor(float.NaN);
            SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["big"] = big, ["small"] = small });
        }
        using (var w = Weights.FromFiles([path], ScalarType.Float32))
        {
            var e = Assert.Throws<WeightFileException>(() => w.Get("small", 8));
            Assert.Contains("'small'", e.Message);
            Assert.Contains("1 NaN or infinite", e.Message);
            Assert.Contains(path, e.Message);
            // Large tensors are not scanned when they stay mapped (that would read the whole file at load) …
            using var big = w.Get("big", 300, 300);
        }
        // … and are on request (with or without a copy).
        using (var w = Weights.FromFiles([path], ScalarType.Float32, load: WeightLoadOptions.Copied with { FiniteCheckMaxElements = long.MaxValue }))
        {
            var e = Assert.Throws<WeightFileException>(() => w.Get("big", 300, 300));
            Assert.Contains("'big'", e.Message);
        }
    }
}
