using PixArtSharp.Loading;
using TorchSharp;

namespace PixArtSharp.Tests.Loading;

public class SafeTensorsSymlinkTests
{
    [Fact]
    public void LoadsThroughASymlinkAsTheHubCacheLaysItOut()
    {
        // snapshots/<commit>/x.safetensors → ../../blobs/<sha256>: the length check must look at the blob, not the link.
        using var dir = new TempDir();
        var tensors = new Dictionary<string, torch.Tensor> { ["x"] = torch.arange(6, dtype: torch.ScalarType.Float32) };
        SafeTensorsWriter.Write(dir.Path("blob"), tensors);
        tensors["x"].Dispose();
        string link = dir.Path("model.safetensors");
        File.CreateSymbolicLink(link, "blob");
        using var f = SafeTensorsFile.Open(link);
        using var x = f.Load("x");
        Assert.Equal(new float[] { 0, 1, 2, 3, 4, 5 }, x.data<float>().ToArray());
    }
}
