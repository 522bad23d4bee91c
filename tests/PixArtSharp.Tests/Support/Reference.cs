using System.Text.Json;
using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Support;

/// <summary>Reads a fixture's tensors (safetensors) and its JSON, and compares our results with them.</summary>
public sealed class Reference : IDisposable
{
    private readonly SafeTensorsFile _file;
    public JsonElement Json { get; }
    public string Name { get; }

    /// <param name="relative">path under fixtures without extension, e.g. "expected/t5_encoder"</param>
    public Reference(string relative)
    {
        Name = relative;
        _file = SafeTensorsFile.Open(Fixtures.Path(relative + ".safetensors"));
        string json = Fixtures.Path(relative + ".json");
        Json = File.Exists(json) ? JsonDocument.Parse(File.ReadAllText(json)).RootElement : default;
    }

    public bool Has(string name) => _file.Tensors.ContainsKey(name);
    public IEnumerable<string> Names => _file.Tensors.Keys;

    /// <summary>A copy of the stored tensor (fixtures are tiny; a copy keeps tests independent of the mapping).</summary>
    public Tensor this[string name] => Has(name)
        ? _file.Load(name).clone()
        : throw new KeyNotFoundException($"{Name}.safetensors has no tensor '{name}'. It has: {string.Join(", ", Names.Take(40))}");

    public void Dispose() => _file.Dispose();
}

public static class Compare
{
    public static double MaxAbsDiff(Tensor expected, Tensor actual)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var e = expected.to(ScalarType.Float64);
        using var a = actual.to(ScalarType.Float64);
        using var d = (e - a).abs().max();
        return d.item<double>();
    }

    public static double MaxAbs(Tensor t)
    {
        using var d = t.to(ScalarType.Float64).abs().max();
        return d.item<double>();
    }

    /// <summary>Asserts |expected − actual| ≤ atol everywhere and returns the largest error seen.</summary>
    public static double Close(Tensor expected, Tensor actual, double atol, string what)
    {
        double err = MaxAbsDiff(expected, actual);
        Assert.True(err <= atol, $"{what}: max |Δ| = {err:E3} > atol {atol:E1} (shape [{string.Join(",", expected.shape)}])");
        return err;
    }

    /// <summary>
    /// Prompt embeddings [B, L, D] against diffusers': within atol at every token of <paramref name="mask"/> [B, L], and
    /// exactly 0 at every padded position (the pipeline does not run T5 on the padding; diffusers has T5's states of
    /// the pad tokens there, which the transformer masks out). Returns the largest error at the tokens.
    /// </summary>
    public static double CloseAtTokens(Tensor expected, Tensor actual, Tensor mask, double atol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var keep = mask.to(ScalarType.Bool).unsqueeze(-1);                                   // [B, L, 1]
        using var padded = actual.masked_fill(keep, 0.0);
        Assert.True(padded.eq(0).all().item<bool>(), $"{what}: a padded position's state is not 0");
        using var tokensOnly = expected.masked_fill(keep.logical_not(), 0.0);
        return Close(tokensOnly, actual, atol, what);
    }

    /// <summary>Asserts |Δ| ≤ rel·max|expected|, the fixtures' rule for values that reach hundreds.</summary>
    public static double CloseRelative(Tensor expected, Tensor actual, double rel, string what)
    {
        double bound = rel * MaxAbs(expected);
        double err = MaxAbsDiff(expected, actual);
        Assert.True(err <= bound, $"{what}: max |Δ| = {err:E3} > {rel:E1}·max|ref| = {bound:E3}");
        return err;
    }
}
