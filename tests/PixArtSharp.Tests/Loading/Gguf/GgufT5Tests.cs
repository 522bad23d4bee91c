using PixArtSharp.Loading;
using PixArtSharp.Loading.Gguf;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading.Gguf;

/// <summary>The tiny Q8_0 T5 GGUF against transformers' T5 with every weight replaced by its dequantized value.</summary>
public class GgufT5Tests(ITestOutputHelper output)
{
    internal static string TinyGguf => Fixtures.Path("gguf", "tiny-t5-shared-q8_0.gguf");

    [Fact]
    public void ReadsHeaderMetadataAndTensorTable()
    {
        using var f = GgufFile.Open(TinyGguf);
        Assert.Equal(3u, f.Version);
        Assert.Equal(32, f.Alignment);
        Assert.Equal(0, f.DataStart % 32);
        Assert.Equal("t5encoder", f.Architecture);
        Assert.Equal(64L, f.Metadata["t5encoder.embedding_length"].AsInt64());
        Assert.Equal(GgufValueType.Float32, f.Metadata["t5encoder.attention.layer_norm_epsilon"].Type);
        Assert.Equal(21, f.TensorList.Count);
        var emb = f.Tensors["token_embd.weight"];
        Assert.Equal(GgmlType.F16, emb.Type);
        Assert.Equal([64L, 32128L], emb.Dims);           // innermost first
        Assert.Equal([32128L, 64L], emb.Shape);
        Assert.Equal(GgmlType.Q8_0, f.Tensors["enc.blk.0.ffn_down.weight"].Type);
        Assert.Equal([64L, 96L], f.Tensors["enc.blk.0.ffn_down.weight"].Shape);
        using var json = new Reference("gguf/t5_gguf");
        foreach (var p in json.Json.GetProperty("tensor_types").EnumerateObject())
            Assert.Equal(p.Value.GetString(), f.Tensors[p.Name].Type.ToString());
    }

    [Fact]
    public void ConfigFromMetadataMatchesTheTransformersConfig()
    {
        var c = T5EncoderModel.ConfigFromGguf(TinyGguf);
        var want = T5Config.Load(Fixtures.Path("gguf", "tiny-pixart-lcm-t5gguf", "text_encoder", "config.json"));
        Assert.Equal((want.VocabSize, want.DModel, want.DKv, want.DFf, want.NumLayers, want.NumHeads),
                     (c.VocabSize, c.DModel, c.DKv, c.DFf, c.NumLayers, c.NumHeads));
        Assert.Equal((want.RelativeAttentionNumBuckets, want.RelativeAttentionMaxDistance), (c.RelativeAttentionNumBuckets, c.RelativeAttentionMaxDistance));
        Assert.Equal(want.LayerNormEpsilon, c.LayerNormEpsilon);
        Assert.Equal((want.DenseActFnResolved, want.IsGatedActResolved), (c.DenseActFnResolved, c.IsGatedActResolved));
    }

    [Fact]
    public void NamesMapAsComfyUiGgufMapsThem()
    {
        Assert.Equal("shared.weight", GgufT5.ToTransformersName("token_embd.weight", true));
        Assert.Equal("encoder.final_layer_norm.weight", GgufT5.ToTransformersName("enc.output_norm.weight", true));
        Assert.Equal("encoder.block.11.layer.0.SelfAttention.relative_attention_bias.weight", GgufT5.ToTransformersName("enc.blk.11.attn_rel_b.weight", true));
        Assert.Equal("encoder.block.3.layer.0.SelfAttention.o.weight", GgufT5.ToTransformersName("enc.blk.3.attn_o.weight", true));
        Assert.Equal("encoder.block.0.layer.0.layer_norm.weight", GgufT5.ToTransformersName("enc.blk.0.attn_norm.weight", true));
        Assert.Equal("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", GgufT5.ToTransformersName("enc.blk.0.ffn_gate.weight", true));
        Assert.Equal("encoder.block.0.layer.1.DenseReluDense.wi_1.weight", GgufT5.ToTransformersName("enc.blk.0.ffn_up.weight", true));
        Assert.Equal("encoder.block.0.layer.1.DenseReluDense.wi.weight", GgufT5.ToTransformersName("enc.blk.0.ffn_up.weight", false));
        Assert.Equal("encoder.block.0.layer.1.DenseReluDense.wo.weight", GgufT5.ToTransformersName("enc.blk.0.ffn_down.weight", true));
        Assert.Equal("encoder.block.0.layer.1.layer_norm.weight", GgufT5.ToTransformersName("enc.blk.0.ffn_norm.weight", true));
    }

    /// <summary>README: last_hidden_state atol 1e-5 (values O(1)).</summary>
    [Fact]
    public void Q8_0FileMatchesTransformersOnTheDequantizedWeights()
    {
        using var r = new Reference("gguf/t5_gguf");
        using var model = T5EncoderModel.FromGguf(TinyGguf, ScalarType.Float32);
        // The projections and the embedding stay encoded; norms and the relative bias are decoded once.
        var attn = model.encoder.block[0].layer_0.SelfAttention;
        Assert.Equal(GgmlType.Q8_0, attn.q.weight_quantized!.Type);
        Assert.Equal(GgmlType.Q8_0, model.encoder.block[1].layer_1.DenseReluDense.wo.weight_quantized!.Type);
        Assert.Equal(GgmlType.F16, model.shared_quantized!.Type);
        Assert.Throws<InvalidOperationException>(() => attn.q.weight);
        Assert.Equal(ScalarType.Float32, attn.relative_attention_bias!.dtype);

        using var ids = r["input_ids"];
        using var mask = r["attention_mask"];
        using var last = model.forward(ids, mask);
        using var expected = r["last_hidden_state"];
        double err = Compare.Close(expected, last, 1e-5, "last_hidden_state");
        using var unq = r["last_hidden_state_unquantized"];
        double q = Compare.MaxAbsDiff(unq, last);
        output.WriteLine($"last_hidden_state: max |Δ| = {err:E2}; vs the unquantized model {q:E2} (JSON: {r.Json.GetProperty("quantization_effect_max_abs").GetDouble():E2})");
        Assert.True(q > 1e-3, "the quantization must show against the unquantized model");
    }

    /// <summary>bf16 compute: the decoded weights are cast once more. Bound as the safetensors bf16 test (1e-1).</summary>
    [Fact]
    public void Bf16StaysCloseToTheFp32Reference()
    {
        using var r = new Reference("gguf/t5_gguf");
        using var model = T5EncoderModel.FromGguf(TinyGguf, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, model.dtype);
        using var ids = r["input_ids"];
        using var mask = r["attention_mask"];
        using var last = model.forward(ids, mask);
        using var expected = r["last_hidden_state"];
        double err = Compare.Close(expected, last, 1e-1, "bf16 last_hidden_state");
        output.WriteLine($"bf16: max |Δ| = {err:E2}");
    }

    [Fact]
    public void CaptionChannelsCheck()
    {
        var c = T5EncoderModel.ConfigFromGguf(TinyGguf);
        GgufT5.CheckFitsTransformer(TinyGguf, c, 64);
        var e = Assert.Throws<GgufFileException>(() => GgufT5.CheckFitsTransformer(TinyGguf, c, 4096));
        Assert.Contains("caption_channels = 4096", e.Message);
        Assert.Contains("64 wide", e.Message);
        Assert.Contains(TinyGguf, e.Message);
        Assert.IsAssignableFrom<WeightFileException>(e);
    }
}
