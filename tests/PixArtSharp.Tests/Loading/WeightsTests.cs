using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

public class WeightsTests
{
    /// <summary>A small checkpoint: blocks.0.attn.to_q.{weight,bias}, norm.weight, pos (int64).</summary>
    private static string Checkpoint(TempDir dir)
    {
        string path = dir.Path("diffusion_pytorch_model.safetensors");
        using var q = torch.arange(0f, 12f).reshape(3, 4).mul(0.1f);
        using var b = torch.tensor(new[] { 1f / 3, -2f / 3, 1e-3f });
        using var n = torch.ones(4);
        using var p = torch.arange(0L, 5L);
        SafeTensorsWriter.Write(path, new Dictionary<string, Tensor>
        {
            ["blocks.0.attn.to_q.weight"] = q,
            ["blocks.0.attn.to_q.bias"] = b,
            ["norm.weight"] = n,
            ["pos"] = p,
        });
        return path;
    }

    [Fact]
    public void SubPathsBindWeightsByCheckpointKey()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        var attn = w.Sub("blocks").Sub("0").Sub("attn");
        Assert.True(attn.Contains("to_q.weight"));
        Assert.False(attn.Contains("to_k.weight"));
        using var q = attn.Sub("to_q").Get("weight", 3, 4);
        Assert.Equal(ScalarType.Float32, q.dtype);
        Assert.Equal(1.1f, q[2, 3].item<float>(), 6);
        using var bias = attn.Get("to_q.bias", 3);
        using var norm = w.Get("norm.weight", 4);
        using var pos = w.Get("pos", ScalarType.Int64, [5]);
        Assert.Equal(ScalarType.Int64, pos.dtype);
        Assert.Equal(new long[] { 0, 1, 2, 3, 4 }, pos.data<long>().ToArray());
        w.CheckAllUsed();
        Assert.Equal(4, w.UsedKeys.Count);
    }

    [Fact]
    public void MissingWeightIsNamedWithItsFullKey()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        var e = Assert.Throws<WeightFileException>(() => w.Sub("blocks.0.attn").Get("to_k.weight", 3, 4));
        Assert.Contains("'blocks.0.attn.to_k.weight'", e.Message);
        Assert.Contains(path, e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void MisShapedWeightIsNamedWithBothShapes()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        var e = Assert.Throws<WeightFileException>(() => w.Get("blocks.0.attn.to_q.weight", 4, 3));
        Assert.Contains("'blocks.0.attn.to_q.weight'", e.Message);
        Assert.Contains("[3, 4]", e.Message);
        Assert.Contains("[4, 3]", e.Message);
        // Rank matters too, even with the same number of elements.
        Assert.Throws<WeightFileException>(() => w.Get("blocks.0.attn.to_q.weight", 12));
        // A refused weight does not count as used.
        Assert.DoesNotContain("blocks.0.attn.to_q.weight", w.UsedKeys);
    }

    [Fact]
    public void UnusedWeightsAreNamed()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        using (w.Get("norm.weight", 4)) { }
        using (w.Get("pos", ScalarType.Int64, [5])) { }
        var e = Assert.Throws<WeightFileException>(() => w.CheckAllUsed());
        Assert.Contains("2 weight(s)", e.Message);
        Assert.Contains("'blocks.0.attn.to_q.bias'", e.Message);
        Assert.Contains("'blocks.0.attn.to_q.weight'", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void HeldDTypeConvertsOnLoadAndGetFloat32KeepsFullPrecision()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, w.DType);
        using var bias = w.Get("blocks.0.attn.to_q.bias", 3);
        Assert.Equal(ScalarType.BFloat16, bias.dtype);
        using var expected = torch.tensor(new[] { 1f / 3, -2f / 3, 1e-3f }).to(ScalarType.BFloat16);
        Assert.True(torch.equal(expected, bias).all().item<bool>());
        using var back = bias.to(ScalarType.Float32);
        Assert.NotEqual(1f / 3, back[0].item<float>()); // really rounded to bf16 (8 mantissa bits)
        Assert.Equal(1f / 3, back[0].item<float>(), 2);
        using var exact = w.GetFloat32("blocks.0.attn.to_q.bias", 3);
        Assert.Equal(ScalarType.Float32, exact.dtype);
        Assert.Equal(new[] { 1f / 3, -2f / 3, 1e-3f }, exact.data<float>().ToArray());
    }

    [Fact]
    public void MatchingDTypeIsHandedOutWithoutACopy()
    {
        using var dir = new TempDir();
        string path = Checkpoint(dir);
        using var w = Weights.FromFiles([path], ScalarType.Float32);
        using var a = w.Get("norm.weight", 4);
        using var b = w.Get("norm.weight", 4);
        // Both are views of the same file mapping: a write through one shows in the other.
        a[1] = torch.tensor(5f);
        Assert.Equal(5f, b[1].item<float>());
        // A converted weight is a copy.
        using var w16 = Weights.FromFiles([path], ScalarType.Float16);
        using var c = w16.Get("norm.weight", 4);
        using var d = w16.Get("norm.weight", 4);
        c[1] = torch.tensor(7f, ScalarType.Float16);
        Assert.Equal(1f, d[1].to(ScalarType.Float32).item<float>());
    }

    [Fact]
    public void SameKeyInTwoFilesIsAnError()
    {
        using var dir = new TempDir();
        string p1 = Checkpoint(dir);
        string p2 = dir.Path("other.safetensors");
        using (var n = torch.ones(4)) SafeTensorsWriter.Write(p2, new Dictionary<string, Tensor> { ["norm.weight"] = n });
        var e = Assert.Throws<WeightFileException>(() => Weights.FromFiles([p1, p2], ScalarType.Float32));
        Assert.Contains("'norm.weight'", e.Message);
        Assert.Contains(p1, e.Message);
        Assert.Contains(p2, e.Message);
    }

    [Fact]
    public void FromTensorsChecksShapesAndUse()
    {
        using var t = torch.zeros(2, 3);
        using var w = Weights.FromTensors(new Dictionary<string, Tensor> { ["lin.weight"] = t, ["lin.bias"] = t }, ScalarType.Float32);
        Assert.Throws<WeightFileException>(() => w.Get("lin.weight", 3, 2));
        using (w.Sub("lin").Get("weight", 2, 3)) { }
        var e = Assert.Throws<WeightFileException>(() => w.CheckAllUsed());
        Assert.Contains("'lin.bias'", e.Message);
    }

    [Fact]
    public void RandomWeightsAreSeededAndShapedOnRequest()
    {
        using var w1 = Weights.Random(7, ScalarType.Float32);
        using var w2 = Weights.Random(7, ScalarType.Float32);
        using var a = w1.Sub("proj").Get("weight", 8, 16);
        using var b = w2.Sub("proj").Get("weight", 8, 16);
        Assert.Equal(new long[] { 8, 16 }, a.shape);
        Assert.True(torch.equal(a, b).all().item<bool>());
        using var n = w1.Get("norm1.weight", 16);
        Assert.True(n.mean().item<float>() is > 0.9f and < 1.1f);
        w1.CheckAllUsed();
        using var w3 = Weights.Random(7, ScalarType.BFloat16);
        using var c = w3.Get("x", 4);
        Assert.Equal(ScalarType.BFloat16, c.dtype);
    }
}
