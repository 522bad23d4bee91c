using PixArtSharp.Loading;
using PixArtSharp.Loading.Gguf;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading.Gguf;

public class GgufWriterTests(ITestOutputHelper output)
{
    private static Tensor RandomMatrix(long rows, long cols, long seed)
    {
        using var g = new Generator((ulong)seed);
        return randn([rows, cols], ScalarType.Float32, generator: g);
    }

    /// <summary>Writes one tensor, reads it back through the reader and decoder.</summary>
    private static Tensor RoundTrip(TempDir dir, Tensor x, GgmlType type)
    {
        string path = dir.Path($"{type}.gguf");
        new GgufWriter().Add("general.architecture", "test").AddTensor("x", x.shape, type, () => x.alias()).Write(path);
        using var f = GgufFile.Open(path);
        Assert.Equal(type, f.Tensors["x"].Type);
        Assert.Equal(x.shape, f.Tensors["x"].Shape);
        Assert.Equal(0, f.DataStart % 32);
        return f.Dequantize("x");
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void FloatTypesRoundTripAsTorchCastsThem(string typeName)
    {
        var type = Enum.Parse<GgmlType>(typeName);   // by name: GgmlType is internal, a test method public
        using var dir = new TempDir();
        using var x = RandomMatrix(8, 512, 1);
        using var back = RoundTrip(dir, x, type);
        var st = type switch { GgmlType.F16 => ScalarType.Float16, GgmlType.BF16 => ScalarType.BFloat16, _ => ScalarType.Float32 };
        using var want = x.to(st).to(ScalarType.Float32);
        Assert.Equal(0.0, Compare.MaxAbsDiff(want, back));
    }

    /// <summary>
    /// Error bounds of the encoders, per block of <c>x</c> ~ N(0, 1):
    /// Q8_0: q = round(x/d) with d = amax/127 in fp32, decoded with d rounded to fp16, so
    /// |Δ| ≤ d/2 + 127·|d − fp16(d)| ≤ d·(0.5 + 127·2⁻¹¹) &lt; 0.57·d.
    /// Q4_K/Q5_K (the simple quantizer): |Δ| ≤ half a step d·sc plus the 6-bit rounding of the scale and min, bounded
    /// here by 1.1 steps of the sub-block's own range/(2^bits − 1); relative RMS measured 0.083 (Q4_K), 0.040 (Q5_K),
    /// asserted below 0.1 / 0.05 (llama.cpp's own Q4_K reaches ≈ 0.07 on Gaussian data).
    /// </summary>
    [Theory]
    [InlineData("Q8_0", 0.008)]
    [InlineData("Q4_K", 0.10)]
    [InlineData("Q5_K", 0.05)]
    public void QuantizedTypesRoundTripWithinTheirBounds(string typeName, double maxRelRms)
    {
        var type = Enum.Parse<GgmlType>(typeName);
        using var dir = new TempDir();
        using var x = RandomMatrix(16, 1024, 2);
        using var back = RoundTrip(dir, x, type);
        using var err = (back - x).abs();
        double relRms = (back - x).pow(2).mean().sqrt().item<float>() / x.pow(2).mean().sqrt().item<float>();
        if (type == GgmlType.Q8_0)
        {
            using var amax = x.reshape(-1, 32).abs().amax([1], keepdim: true);
            using var ratio = (err.reshape(-1, 32) / (amax / 127)).max();
            output.WriteLine($"{type}: max |Δ|/d = {ratio.item<float>():F4}, rel RMS = {relRms:E2}");
            Assert.True(ratio.item<float>() < 0.57f);
        }
        else
        {
            int bits = type == GgmlType.Q4_K ? 4 : 5;
            using var sub = x.reshape(-1, 32);
            using var step = (sub.amax([1], keepdim: true) - sub.amin([1], keepdim: true).clamp_max(0)) / ((1 << bits) - 1);
            using var ratio = (err.reshape(-1, 32) / step).max();
            output.WriteLine($"{type}: max |Δ|/step = {ratio.item<float>():F3}, rel RMS = {relRms:E2}");
            Assert.True(ratio.item<float>() < 1.1f);
        }
        Assert.True(relRms < maxRelRms, $"{type}: relative RMS error {relRms:E3}");
    }

    [Fact]
    public void Q8_0OfQ8_0DecodedValuesIsLossless()
    {
        // Re-encoding decoded Q8_0 values gives the same values back (d is an fp16 value and every q an integer).
        using var dir = new TempDir();
        using var x = RandomMatrix(4, 256, 3);
        using var once = RoundTrip(dir, x, GgmlType.Q8_0);
        using var twice = RoundTrip(dir, once, GgmlType.Q8_0);
        Assert.Equal(0.0, Compare.MaxAbsDiff(once, twice));
    }

    /// <summary>The fixture's T5, decoded and written again by WriteT5 (matrices Q8_0, embedding F16 as in the
    /// fixture): the same values, so the same output as transformers (atol 1e-5).</summary>
    [Fact]
    public void WriteT5ReproducesTheFixtureFile()
    {
        using var dir = new TempDir();
        string path = dir.Path("t5.gguf");
        var config = T5EncoderModel.ConfigFromGguf(GgufT5Tests.TinyGguf);
        using (var src = GgufFile.Open(GgufT5Tests.TinyGguf))
        {
            var byKey = src.TensorList.ToDictionary(t => GgufT5.ToTransformersName(t.Name, true), t => t.Name);
            GgufWriter.WriteT5(path, config, key => src.Dequantize(byKey[key]), GgmlType.Q8_0, embeddingType: GgmlType.F16);
            using var written = GgufFile.Open(path);
            Assert.Equal(src.TensorList.Select(t => (t.Name, t.Type, string.Join(",", t.Dims))).Order(),
                         written.TensorList.Select(t => (t.Name, t.Type, string.Join(",", t.Dims))).Order());
            foreach (var t in src.TensorList)
            {
                using var a = src.Dequantize(t.Name);
                using var b = written.Dequantize(t.Name);
                Assert.True(Compare.MaxAbsDiff(a, b) == 0, t.Name);
            }
            Assert.Equal("t5encoder", written.Architecture);
        }
        using var r = new Reference("gguf/t5_gguf");
        using var model = T5EncoderModel.FromGguf(path, ScalarType.Float32);
        using var ids = r["input_ids"];
        using var mask = r["attention_mask"];
        using var last = model.forward(ids, mask);
        using var expected = r["last_hidden_state"];
        output.WriteLine($"written Q8_0 file: max |Δ| = {Compare.Close(expected, last, 1e-5, "last_hidden_state"):E2}");
    }

    [Fact]
    public void WriteT5FromShapesWritesRandomWeightsPerTensor()
    {
        var config = new T5Config { VocabSize = 40, DModel = 256, DKv = 32, DFf = 512, NumLayers = 1, NumHeads = 8, FeedForwardProj = "gated-gelu" };
        using var dir = new TempDir();
        string path = dir.Path("random.gguf");
        using var g = new Generator(5);
        var asked = new List<string>();
        GgufWriter.WriteT5(path, config, (key, shape) => { asked.Add(key); return randn(shape, generator: g).mul_(0.02); }, GgmlType.Q4_K);
        Assert.Contains("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", asked);
        Assert.Equal(asked.Count, asked.Distinct().Count());
        using var f = GgufFile.Open(path);
        Assert.Equal(GgmlType.Q4_K, f.Tensors["enc.blk.0.ffn_gate.weight"].Type);
        Assert.Equal(GgmlType.Q4_K, f.Tensors["token_embd.weight"].Type);
        Assert.Equal(GgmlType.F32, f.Tensors["enc.blk.0.attn_rel_b.weight"].Type);
        Assert.Equal(GgmlType.F32, f.Tensors["enc.output_norm.weight"].Type);
        Assert.Equal(15L, f.Metadata["general.file_type"].AsInt64());
        using var model = T5EncoderModel.FromGguf(path, ScalarType.BFloat16);
        using var ids = tensor(new long[,] { { 1, 2, 39 } });
        using var mask = ones(1, 3);
        using var y = model.forward(ids, mask);
        Assert.False(y.isnan().any().item<bool>());
    }

    /// <summary>An original (ReLU, non-gated) T5: llama.cpp stores wi as ffn_up without ffn_gate. F32 file: exact.</summary>
    [Fact]
    public void NonGatedT5RoundTripsThroughFfnUp()
    {
        var config = new T5Config { VocabSize = 30, DModel = 64, DKv = 16, DFf = 96, NumLayers = 2, NumHeads = 4, FeedForwardProj = "relu" };
        var weights = new Dictionary<string, Tensor>();
        using (var rnd = Weights.Random(3, ScalarType.Float32, created: (k, t) => weights[k] = t.alias().DetachFromDisposeScope()))
        using (new T5EncoderModel(config, rnd)) { }
        Assert.Contains("encoder.block.0.layer.1.DenseReluDense.wi.weight", weights.Keys);
        using var dir = new TempDir();
        string path = dir.Path("relu.gguf");
        GgufWriter.WriteT5(path, config, k => weights[k].alias(), GgmlType.F32);
        using (var f = GgufFile.Open(path))
        {
            Assert.Contains("enc.blk.0.ffn_up.weight", f.Tensors.Keys);
            Assert.DoesNotContain("enc.blk.0.ffn_gate.weight", f.Tensors.Keys);
        }
        var c = T5EncoderModel.ConfigFromGguf(path);
        Assert.False(c.IsGatedActResolved);
        Assert.Equal("relu", c.DenseActFnResolved);
        using var gguf = T5EncoderModel.FromGguf(path, ScalarType.Float32);
        using var wf = Weights.FromTensors(weights, ScalarType.Float32);
        using var plain = new T5EncoderModel(config, wf);
        using var ids = tensor(new long[,] { { 1, 2, 29, 0 } });
        using var mask = ones(1, 4);
        using var a = gguf.forward(ids, mask);
        using var b = plain.forward(ids, mask);
        Assert.Equal(0.0, Compare.MaxAbsDiff(b, a));
        foreach (var t in weights.Values) t.Dispose();
    }

    public static TheoryData<string, double> T5Types => new()
    {
        { "Q8_0", 0.05 }, { "Q4_K", 0.6 }, { "Q5_K", 0.35 }, { "F16", 2.5e-3 }, { "BF16", 2e-2 },
    };

    /// <summary>
    /// A random T5 (d_model 256 so K-quant rows are whole super-blocks) written as each type: the GGUF model equals a
    /// float model built from the decoded weights (same arithmetic, atol 1e-5; measured: exact), and stays near the
    /// unquantized model. Relative RMS error of the output, measured: Q8_0 2.7e-2, Q4_K 0.38, Q5_K 0.22, F16 1.2e-3,
    /// BF16 9.6e-3 (bounds ≈ 1.5–2×). A random T5 amplifies weight error ≈ 5× (its embeddings are std 0.05 and the
    /// final RMSNorm scales them up), so these are far above what the quantization does to a trained T5-XXL.
    /// </summary>
    [Theory]
    [MemberData(nameof(T5Types))]
    public void WrittenT5RunsAsItsDecodedWeights(string typeName, double atolVsFloat)
    {
        var type = Enum.Parse<GgmlType>(typeName);
        var config = new T5Config { VocabSize = 300, DModel = 256, DKv = 32, DFf = 512, NumLayers = 2, NumHeads = 4, FeedForwardProj = "gated-gelu" };
        var weights = new Dictionary<string, Tensor>();
        using (var rnd = Weights.Random(7, ScalarType.Float32, std: 0.05, created: (k, t) => weights[k] = t.alias().DetachFromDisposeScope()))
        using (new T5EncoderModel(config, rnd)) { }
        using var dir = new TempDir();
        string path = dir.Path($"t5-{type}.gguf");
        GgufWriter.WriteT5(path, config, k => weights[k].alias(), type);

        var decoded = new Dictionary<string, Tensor>();
        using (var f = GgufFile.Open(path))
            foreach (var t in f.TensorList) decoded[GgufT5.ToTransformersName(t.Name, true)] = f.Dequantize(t.Name);
        Assert.Equal(weights.Keys.Order(), decoded.Keys.Order());

        using var ids = tensor(new long[,] { { 5, 17, 299, 0, 1, 42, 7, 7 }, { 3, 1, 0, 0, 0, 0, 0, 0 } });
        using var mask = tensor(new long[,] { { 1, 1, 1, 1, 1, 1, 1, 1 }, { 1, 1, 0, 0, 0, 0, 0, 0 } });
        using var gguf = T5EncoderModel.FromGguf(path, ScalarType.Float32);
        using var wd = Weights.FromTensors(decoded, ScalarType.Float32);
        using var asDecoded = new T5EncoderModel(config, wd);
        using var wf = Weights.FromTensors(weights, ScalarType.Float32);
        using var unquantized = new T5EncoderModel(config, wf);
        using var a = gguf.forward(ids, mask);
        using var b = asDecoded.forward(ids, mask);
        using var c = unquantized.forward(ids, mask);
        double same = Compare.Close(b, a, 1e-5, $"{type} vs decoded weights");
        double q = Compare.MaxAbsDiff(c, a);
        double relRms = (a - c).pow(2).mean().sqrt().item<float>() / c.pow(2).mean().sqrt().item<float>();
        output.WriteLine($"{type}: vs decoded-weight model {same:E2}, vs unquantized max {q:E2}, relative RMS {relRms:E2}, file {new FileInfo(path).Length} bytes");
        Assert.True(relRms < atolVsFloat, $"{type}: relative RMS error vs the unquantized model {relRms:E3} > {atolVsFloat:E1}");
        foreach (var t in weights.Values.Concat(decoded.Values)) t.Dispose();
    }
}
