using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

public class NonFiniteTests
{
    [Fact]
    public void FiniteTensorsPassUnchanged()
    {
        using var t = torch.randn(2, 4, 8, 8);
        Assert.Same(t, NonFinite.Check(t, "the final latents"));
        using var b = t.to(ScalarType.BFloat16);
        Assert.Equal(0, NonFinite.Count(b));
        using var i = torch.arange(10);
        Assert.Equal(0, NonFinite.Count(i));
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void NaNAndInfinityNameTheStage(ScalarType dtype)
    {
        using var t = torch.zeros(1, 4, 8, 8, dtype);
        t[0, 1, 2, 3] = torch.tensor(float.NaN);
        t[0, 2, 2, 3] = torch.tensor(float.NegativeInfinity);
        var e = Assert.Throws<NonFiniteOutputException>(() => NonFinite.Check(t, "the final latents"));
        Assert.Equal("the final latents", e.Stage);
        Assert.StartsWith("the final latents hold 2 NaN or infinite value(s) of 256", e.Message);
        Assert.IsAssignableFrom<WeightFileException>(e);   // the "broken model" exit code
    }

    /// <summary>A NaN in a transformer weight: refused at load, naming the tensor and file (an all-black image before).</summary>
    [Fact]
    public void ANaNWeightInTheTinyTransformerIsRefusedAtLoad()
    {
        using var dir = new TempDir();
        string src = Fixtures.Path("tiny-pixart", "transformer");
        string dst = Directory.CreateDirectory(dir.Path("transformer")).FullName;
        File.Copy(Path.Combine(src, "config.json"), Path.Combine(dst, "config.json"));
        string weights = Path.Combine(dst, "diffusion_pytorch_model.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        using (var st = SafeTensorsFile.Open(Path.Combine(src, "diffusion_pytorch_model.safetensors")))
            foreach (var name in st.Tensors.Keys) tensors[name] = st.Load(name).clone();
        const string victim = "transformer_blocks.1.attn2.to_v.weight";
        tensors[victim][0, 0] = torch.tensor(float.NaN);
        SafeTensorsWriter.Write(weights, tensors);
        foreach (var t in tensors.Values) t.Dispose();

        var e = Assert.Throws<WeightFileException>(() => PixArtTransformer2DModel.FromFolder(dst));
        Assert.Contains(victim, e.Message);
        Assert.Contains(weights, e.Message);
        Assert.Contains("NaN", e.Message);
    }
}
