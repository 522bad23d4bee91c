using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Models;

public class T5EncoderTests(ITestOutputHelper output)
{
    private const double Atol = 1e-5;   // README: atol 1e-5, values O(1); the fp64 reference differs by 1.6e-6

    private static string TinyDir => Fixtures.Path("tiny-pixart", "text_encoder");

    [Fact]
    public void MatchesTransformersOutputAndIntermediates()
    {
        using var r = new Reference("expected/t5_encoder");
        using var model = T5EncoderModel.FromFolder(TinyDir, null, ScalarType.Float32);
        using var ids = r["input_ids"];
        using var mask = r["attention_mask"];

        var seen = new Dictionary<string, Tensor>();
        using var last = model.forward(ids, mask, (name, t) => seen[name] = t.clone().DetachFromDisposeScope());
        Assert.Equal(ScalarType.Float32, last.dtype);

        var names = new List<string> { "embeddings", "position_bias" };
        for (int i = 0; i < model.config.NumLayers; i++) names.Add($"block.{i}.output");
        Assert.Equal(names.Order(), seen.Keys.Order());
        foreach (var n in names)
        {
            using var e = r[n];
            double err = Compare.Close(e, seen[n], Atol, n);
            output.WriteLine($"{n}: max |Δ| = {err:E2}");
        }
        using var expected = r["last_hidden_state"];
        double lastErr = Compare.Close(expected, last, Atol, "last_hidden_state");
        output.WriteLine($"last_hidden_state: max |Δ| = {lastErr:E2}");
        foreach (var t in seen.Values) t.Dispose();
    }

    [Fact]
    public void RelativePositionBucketsMatchTheTable()
    {
        using var r = new Reference("expected/t5_encoder");
        var table = r.Json.GetProperty("relative_position_buckets");
        var positions = table.GetProperty("relative_positions").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        var expected = table.GetProperty("buckets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.Equal(239, positions.Length);
        Assert.True(table.GetProperty("bidirectional").GetBoolean());

        using var rel = tensor(positions);
        using var buckets = T5Attention.RelativePositionBucket(rel, bidirectional: true,
            table.GetProperty("num_buckets").GetInt32(), table.GetProperty("max_distance").GetInt32());
        Assert.Equal(expected, buckets.data<long>().ToArray());
    }

    /// <summary>
    /// bf16/fp16 weights against the fp32 reference. Measured on the tiny model (values O(1), max |x| 3.4):
    /// last_hidden_state max |Δ| bf16 5.1e-2, fp16 5.8e-3 (block outputs up to 7.2e-2 and 7.1e-3). The bounds
    /// leave about 2× headroom. Most of it is the weights' own rounding: the same weights rounded to bf16/fp16 and run
    /// in fp32 give 3.3e-2 / 4.2e-3; the rest comes from the projections' inputs held in the weight dtype.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.BFloat16, 1e-1)]
    [InlineData(ScalarType.Float16, 1.5e-2)]
    public void ReducedPrecisionStaysCloseToFp32(ScalarType dtype, double atol)
    {
        using var r = new Reference("expected/t5_encoder");
        using var model = T5EncoderModel.FromFolder(TinyDir, null, dtype);
        Assert.Equal(dtype, model.dtype);
        // The precision scheme: wo in fp32 for fp16 only; norms of the blocks in the weight dtype; final norm fp32.
        var ff = model.encoder.block[0].layer_1;
        Assert.Equal(dtype == ScalarType.Float16 ? ScalarType.Float32 : dtype, ff.DenseReluDense.wo.weight.dtype);
        Assert.Equal(dtype, ff.DenseReluDense.wi_0!.weight.dtype);
        Assert.Equal(dtype, ff.layer_norm.weight.dtype);
        Assert.Equal(ScalarType.Float32, model.encoder.final_layer_norm.weight.dtype);
        Assert.Equal(ScalarType.Float32, model.encoder.block[0].layer_0.SelfAttention.relative_attention_bias!.dtype);

        using var ids = r["input_ids"];
        using var mask = r["attention_mask"];
        var seen = new Dictionary<string, Tensor>();
        using var last = model.forward(ids, mask, (name, t) => seen[name] = t.clone().DetachFromDisposeScope());
        Assert.Equal(ScalarType.Float32, last.dtype);
        foreach (var n in seen.Keys.Order())
        {
            Assert.Equal(ScalarType.Float32, seen[n].dtype);
            using var e = r[n];
            output.WriteLine($"{dtype} {n}: max |Δ| = {Compare.MaxAbsDiff(e, seen[n]):E2}");
        }
        using var expected = r["last_hidden_state"];
        double err = Compare.Close(expected, last, atol, $"{dtype} last_hidden_state");
        output.WriteLine($"{dtype} last_hidden_state: max |Δ| = {err:E2} (bound {atol:E1})");
        foreach (var t in seen.Values) t.Dispose();
    }

    [Theory]
    [InlineData("PixArt-LCM-XL-2-1024-MS")]
    [InlineData("PixArt-XL-2-1024-MS")]
    [InlineData("PixArt-XL-2-512x512")]
    public void RealConfigsDescribeT5V11Xxl(string repo)
    {
        var c = T5Config.Load(Fixtures.Path("real-configs", repo, "text_encoder", "config.json"));
        Assert.Equal(4096, c.DModel);
        Assert.Equal(24, c.NumLayers);
        Assert.Equal(64, c.NumHeads);
        Assert.Equal(64, c.DKv);
        Assert.Equal(4096, c.InnerDim);
        Assert.Equal(10240, c.DFf);
        Assert.Equal(32128, c.VocabSize);
        Assert.Equal(32, c.RelativeAttentionNumBuckets);
        Assert.Equal(128, c.RelativeAttentionMaxDistance);
        Assert.Equal(1e-6, c.LayerNormEpsilon);
        Assert.Equal("gated-gelu", c.FeedForwardProj);
        Assert.True(c.IsGatedActResolved);
        Assert.Equal("gelu_new", c.DenseActFnResolved);
        Assert.False(c.TieWordEmbeddings);
        // 4.76B parameters as the checkpoint holds them (shared + blocks + block 0's bias table + final norm).
        long perBlock = 4L * c.DModel * c.InnerDim + 3L * c.DModel * c.DFf + 2 * c.DModel;
        long total = (long)c.VocabSize * c.DModel + c.NumLayers * perBlock + c.RelativeAttentionNumBuckets * c.NumHeads + c.DModel;
        Assert.Equal(4_762_310_656L, total);
    }

    /// <summary>The model asks for exactly the keys of the real (sharded) checkpoint index: 24 blocks, shared.weight,
    /// no embed_tokens. Shapes come from a small config with the real layer count, so this stays fast.</summary>
    [Fact]
    public void AsksForExactlyTheRealCheckpointKeys()
    {
        string index = Fixtures.Path("real-configs", "PixArt-LCM-XL-2-1024-MS", "text_encoder", "model.safetensors.index.json");
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(index));
        var keys = doc.RootElement.GetProperty("weight_map").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToList();

        var c = Small();
        c.NumLayers = 24;
        using var w = Weights.Random(7, ScalarType.BFloat16);
        using var model = new T5EncoderModel(c, w);
        Assert.Equal(keys, w.UsedKeys.Order(StringComparer.Ordinal).ToList());
    }

    [Fact]
    public void TinyConfigLoadsWithDefaultsAndDerivations()
    {
        var c = T5Config.Load(Path.Combine(TinyDir, "config.json"));
        Assert.Equal((16, 8, 4, 32, 2, 32128), (c.DModel, c.DKv, c.NumHeads, c.DFf, c.NumLayers, c.VocabSize));
        Assert.Equal(32, c.InnerDim);
        Assert.True(c.IsGatedActResolved);
        Assert.Equal("gelu_new", c.DenseActFnResolved);

        // transformers' derivation from feed_forward_proj alone.
        var relu = new T5Config();
        Assert.Equal(("relu", false), (relu.DenseActFnResolved, relu.IsGatedActResolved));
        var gatedSilu = new T5Config { FeedForwardProj = "gated-silu" };
        Assert.Equal(("silu", true), (gatedSilu.DenseActFnResolved, gatedSilu.IsGatedActResolved));
        Assert.Throws<ModelConfigException>(() => new T5Config { FeedForwardProj = "relu-gated" }.Validate());
        Assert.Throws<ModelConfigException>(() => new T5Config { FeedForwardProj = "gated-gelu-x" }.Validate());
        var ex = Assert.Throws<ModelConfigException>(() => new T5Config { FeedForwardProj = "gated-swish7" }.Validate());
        Assert.Contains("swish7", ex.Message);
    }

    // ---- Small in-memory models: loading errors, tied embeddings, plain ReLU FFN ----

    private static T5Config Small(string ffn = "gated-gelu") => new()
    {
        VocabSize = 11,
        DModel = 6,
        DKv = 4,
        NumHeads = 2,
        DFf = 10,
        NumLayers = 2,
        RelativeAttentionNumBuckets = 8,
        RelativeAttentionMaxDistance = 20,
        FeedForwardProj = ffn,
    };

    private static Dictionary<string, Tensor> SmallTensors(T5Config c, int seed = 1)
    {
        var g = new Generator((ulong)seed);
        Tensor R(params long[] shape) => randn(shape, generator: g).mul_(0.5);
        var d = new Dictionary<string, Tensor> { ["shared.weight"] = R(c.VocabSize, c.DModel) };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string a = $"encoder.block.{i}.layer.0.";
            foreach (var p in new[] { "q", "k", "v" }) d[a + $"SelfAttention.{p}.weight"] = R(c.InnerDim, c.DModel);
            d[a + "SelfAttention.o.weight"] = R(c.DModel, c.InnerDim);
            if (i == 0) d[a + "SelfAttention.relative_attention_bias.weight"] = R(c.RelativeAttentionNumBuckets, c.NumHeads);
            d[a + "layer_norm.weight"] = R(c.DModel).add_(1);
            string f = $"encoder.block.{i}.layer.1.";
            if (c.IsGatedActResolved)
            {
                d[f + "DenseReluDense.wi_0.weight"] = R(c.DFf, c.DModel);
                d[f + "DenseReluDense.wi_1.weight"] = R(c.DFf, c.DModel);
            }
            else d[f + "DenseReluDense.wi.weight"] = R(c.DFf, c.DModel);
            d[f + "DenseReluDense.wo.weight"] = R(c.DModel, c.DFf);
            d[f + "layer_norm.weight"] = R(c.DModel).add_(1);
        }
        d["encoder.final_layer_norm.weight"] = R(c.DModel).add_(1);
        return d;
    }

    private static (Tensor Ids, Tensor Mask) SmallInputs() =>
        (tensor(new long[,] { { 3, 7, 1, 0, 0 }, { 10, 2, 5, 9, 1 } }), tensor(new long[,] { { 1, 1, 1, 0, 0 }, { 1, 1, 1, 1, 1 } }));

    private static void DisposeAll(Dictionary<string, Tensor> d) { foreach (var t in d.Values) t.Dispose(); }

    [Theory]
    [InlineData("encoder.block.1.layer.0.SelfAttention.k.weight")]
    [InlineData("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")]
    [InlineData("encoder.block.1.layer.1.DenseReluDense.wo.weight")]
    [InlineData("encoder.final_layer_norm.weight")]
    [InlineData("shared.weight")]
    public void MissingWeightIsNamed(string key)
    {
        var c = Small();
        var d = SmallTensors(c);
        d.Remove(key, out var removed);
        removed!.Dispose();
        using var w = Weights.FromTensors(d, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new T5EncoderModel(c, w));
        Assert.Contains($"'{key}'", ex.Message);
        Assert.Contains("missing", ex.Message);
        DisposeAll(d);
    }

    [Theory]
    [InlineData("encoder.block.0.layer.0.SelfAttention.q.weight")]
    [InlineData("encoder.block.1.layer.1.DenseReluDense.wi_1.weight")]
    [InlineData("encoder.block.0.layer.1.layer_norm.weight")]
    [InlineData("shared.weight")]
    public void MisShapedWeightIsNamed(string key)
    {
        var c = Small();
        var d = SmallTensors(c);
        var shape = d[key].shape.ToArray();
        shape[^1] += 1;
        d[key].Dispose();
        d[key] = zeros(shape);
        using var w = Weights.FromTensors(d, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new T5EncoderModel(c, w));
        Assert.Contains($"'{key}'", ex.Message);
        Assert.Contains($"[{string.Join(", ", shape)}]", ex.Message);
        DisposeAll(d);
    }

    [Fact]
    public void UnexpectedWeightIsNamed()
    {
        var c = Small();
        var d = SmallTensors(c);
        d["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = zeros(c.RelativeAttentionNumBuckets, c.NumHeads);
        using var w = Weights.FromTensors(d, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new T5EncoderModel(c, w));
        Assert.Contains("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", ex.Message);
        DisposeAll(d);
    }

    [Fact]
    public void TiedEmbedTokensIsTheSharedTable()
    {
        var c = Small();
        var (ids, mask) = SmallInputs();
        using var _i = ids;
        using var _m = mask;

        var plain = SmallTensors(c);
        using var wPlain = Weights.FromTensors(plain, ScalarType.Float32);
        using var mPlain = new T5EncoderModel(c, wPlain);
        using var expected = mPlain.forward(ids, mask);

        // Both keys stored (transformers' state_dict before save drops the tie): accepted and marked used.
        var both = SmallTensors(c);
        both["encoder.embed_tokens.weight"] = both["shared.weight"].clone();
        using var wBoth = Weights.FromTensors(both, ScalarType.Float32);
        using var mBoth = new T5EncoderModel(c, wBoth);
        Assert.Contains("encoder.embed_tokens.weight", wBoth.UsedKeys);
        using var outBoth = mBoth.forward(ids, mask);
        Assert.Equal(0.0, Compare.MaxAbsDiff(expected, outBoth));

        // Only the tied key: it is the embedding.
        var tiedOnly = SmallTensors(c);
        tiedOnly.Remove("shared.weight", out var sharedW);
        tiedOnly["encoder.embed_tokens.weight"] = sharedW!;
        using var wTied = Weights.FromTensors(tiedOnly, ScalarType.Float32);
        using var mTied = new T5EncoderModel(c, wTied);
        using var outTied = mTied.forward(ids, mask);
        Assert.Equal(0.0, Compare.MaxAbsDiff(expected, outTied));

        // A tied table of another shape is an error naming it.
        var bad = SmallTensors(c);
        bad["encoder.embed_tokens.weight"] = zeros(c.VocabSize + 1, c.DModel);
        using var wBad = Weights.FromTensors(bad, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new T5EncoderModel(c, wBad));
        Assert.Contains("'encoder.embed_tokens.weight'", ex.Message);

        foreach (var d in new[] { plain, both, tiedOnly, bad }) DisposeAll(d);
    }

    [Fact]
    public void PlainReluFeedForwardIsWoOfReluOfWi()
    {
        var c = Small("relu");
        var d = SmallTensors(c);
        Assert.Contains("encoder.block.0.layer.1.DenseReluDense.wi.weight", d.Keys);
        using var w = Weights.FromTensors(d, ScalarType.Float32);
        using var model = new T5EncoderModel(c, w);
        var ffn = model.encoder.block[0].layer_1.DenseReluDense;
        Assert.Null(ffn.wi_0);

        using var x = randn(2, 3, c.DModel, generator: new Generator(5));
        using var got = ffn.forward(x);
        using var want = F.linear(F.relu(F.linear(x, d["encoder.block.0.layer.1.DenseReluDense.wi.weight"])),
                                  d["encoder.block.0.layer.1.DenseReluDense.wo.weight"]);
        Assert.Equal(0.0, Compare.MaxAbsDiff(want, got));

        var (ids, mask) = SmallInputs();
        using var _i = ids;
        using var _m = mask;
        using var outp = model.forward(ids, mask);
        Assert.Equal(new long[] { 2, 5, c.DModel }, outp.shape);
        Assert.True(outp.isfinite().all().item<bool>());
        DisposeAll(d);
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void RandomWeightsGiveFiniteFp32Output(ScalarType dtype)
    {
        var c = Small();
        using var w = Weights.Random(3, dtype);
        using var model = new T5EncoderModel(c, w);
        Assert.DoesNotContain("encoder.embed_tokens.weight", w.UsedKeys);   // no second random table
        var (ids, mask) = SmallInputs();
        using var _i = ids;
        using var _m = mask;
        using var outp = model.forward(ids, mask);
        Assert.Equal(ScalarType.Float32, outp.dtype);
        Assert.Equal(new long[] { 2, 5, c.DModel }, outp.shape);
        Assert.True(outp.isfinite().all().item<bool>());
    }

    [Fact]
    public void BadInputsAreArgumentErrors()
    {
        var c = Small();
        var d = SmallTensors(c);
        using var w = Weights.FromTensors(d, ScalarType.Float32);
        using var model = new T5EncoderModel(c, w);
        var (ids, mask) = SmallInputs();
        using var _i = ids;
        using var _m = mask;

        void Expect(string param, Tensor i, Tensor m, string fragment)
        {
            var ex = Assert.Throws<ArgumentException>(() => model.forward(i, m));
            Assert.Equal(param, ex.ParamName);
            Assert.Contains(fragment, ex.Message);
        }
        using var ids32 = ids.to(ScalarType.Int32);
        Expect("inputIds", ids32, mask, "int64");
        using var ids1d = ids.flatten();
        Expect("inputIds", ids1d, mask, "[batch, length]");
        using var big = ids.clone();
        big[0, 0] = tensor(11L);
        Expect("inputIds", big, mask, "[0, 11)");
        using var shortMask = mask.narrow(1, 0, 4);
        Expect("attentionMask", ids, shortMask, "shape");
        using var twos = mask * 2;
        Expect("attentionMask", ids, twos, "0 (padding) and 1");

        // A bool mask is accepted and means the same.
        using var boolMask = mask.to(ScalarType.Bool);
        using var a = model.forward(ids, mask);
        using var b = model.forward(ids, boolMask);
        Assert.Equal(0.0, Compare.MaxAbsDiff(a, b));
        DisposeAll(d);
    }
}
