using PixArtSharp.Cli;
using PixArtSharp.Loading;
using PixArtSharp.Tests.Support;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Cli;

/// <summary>The warning given before loading a model that does not fit in the memory the machine has free.</summary>
public sealed class MemoryCheckTests
{
    private static readonly ModelFolder Tiny = ModelFolder.Open(Fixtures.Path("tiny-pixart-lcm"));

    /// <summary>Elements in a component's safetensors, counted from the tensors' byte lengths (the fixtures are fp32).</summary>
    private static long Fp32Elements(string component)
    {
        string dir = Tiny.ComponentDir(component);
        return Directory.GetFiles(dir, "*.safetensors").Sum(f =>
        {
            using var st = SafeTensorsFile.Open(f);
            Assert.All(st.Tensors.Values, t => Assert.Equal("F32", t.DType));
            return st.Tensors.Values.Sum(t => t.ByteLength / 4);
        });
    }

    [Fact]
    public void ParameterCountsComeFromTheHeaders()
    {
        foreach (var c in new[] { "text_encoder", "transformer", "vae" })
            Assert.Equal(Fp32Elements(c), Tiny.ParameterCount(c, null));
        // A variant the folder lacks falls back to the default weights, as loading does.
        Assert.Equal(Fp32Elements("vae"), Tiny.ParameterCount("vae", "fp16"));
    }

    [Fact]
    public void WarnsOnlyWhenTheWeightsDoNotFitAndSuggestsBf16WhenThatFits()
    {
        long largest = new[] { "text_encoder", "transformer", "vae" }.Max(Fp32Elements);
        long all = new[] { "text_encoder", "transformer", "vae" }.Sum(Fp32Elements);

        Assert.Null(MemoryCheck.Warning(Tiny, null, ScalarType.Float32, allLoaded: false, availableBytes: 4 * largest));
        Assert.Null(MemoryCheck.Warning(Tiny, null, ScalarType.Float32, allLoaded: true, availableBytes: 4 * all));

        string? w = MemoryCheck.Warning(Tiny, null, ScalarType.Float32, allLoaded: false, availableBytes: 4 * largest - 1);
        Assert.NotNull(w);
        Assert.Contains("in fp32", w);
        Assert.Contains("Use --dtype bf16", w);
        Assert.NotNull(MemoryCheck.Warning(Tiny, null, ScalarType.Float32, allLoaded: true, availableBytes: 4 * all - 1));

        string? tight = MemoryCheck.Warning(Tiny, null, ScalarType.BFloat16, allLoaded: false, availableBytes: 2 * largest - 1);
        Assert.NotNull(tight);
        Assert.Contains("Close other programs", tight);
    }
}
