using PixArtSharp.Loading;
using PixArtSharp.Tests.Support;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

public class SafeTensorsSmokeTests
{
    [Fact]
    public void ReadsFixtureModelZeroCopyWithCorrectValues()
    {
        using var f = SafeTensorsFile.Open(Fixtures.Path("tiny-pixart", "vae", "diffusion_pytorch_model.safetensors"));
        Assert.Contains("decoder.conv_in.weight", f.Tensors.Keys);
        using var t = f.Load("decoder.conv_in.weight");
        Assert.Equal(ScalarType.Float32, t.dtype);
        // Round trip through our writer gives the same values.
        string tmp = Path.Combine(Path.GetTempPath(), $"st-{Guid.NewGuid():N}.safetensors");
        try
        {
            SafeTensorsWriter.Write(tmp, new Dictionary<string, Tensor> { ["x"] = t, ["i"] = tensor(new long[] { 1, 2, 3 }) });
            using var g = SafeTensorsFile.Open(tmp);
            using var x = g.Load("x");
            Assert.Equal(0.0, Compare.MaxAbsDiff(t, x));
            Assert.Equal(new long[] { 1, 2, 3 }, g.Load("i").data<long>().ToArray());
        }
        finally { File.Delete(tmp); }
    }

    [Fact]
    public void MappingOutlivesTheScopeOfTheFirstLoad()
    {
        using var f = SafeTensorsFile.Open(Fixtures.Path("tiny-pixart", "vae", "diffusion_pytorch_model.safetensors"));
        float expected;
        using (NewDisposeScope())
            expected = f.Load("decoder.conv_in.weight").sum().item<float>();
        // The first load's scope has ended; the file's mapping must still be valid for later views.
        using var again = f.Load("decoder.conv_in.weight");
        Assert.Equal(expected, again.sum().item<float>());
    }
}
