using System.Text.Json.Serialization;
using PixArtSharp.Loading;

namespace PixArtSharp.Models;

/// <summary>
/// <c>text_encoder/config.json</c>: transformers' <c>T5Config</c> (v4.42.4) with its Python defaults. Only the
/// encoder's keys matter here; decoder keys (<c>num_decoder_layers</c>, <c>use_cache</c>, …) are read and ignored.
/// <c>dense_act_fn</c> and <c>is_gated_act</c> are derived from <c>feed_forward_proj</c> as transformers derives
/// them (<c>"gated-gelu"</c> → gated <c>gelu_new</c>); values stored in the file win, as they do in transformers
/// (<c>PretrainedConfig.__init__</c> sets leftover kwargs after the derivation).
/// </summary>
internal sealed class T5Config
{
    public string[]? Architectures { get; set; }
    public string? ModelType { get; set; } = "t5";
    public int VocabSize { get; set; } = 32128;
    public int DModel { get; set; } = 512;
    public int DKv { get; set; } = 64;
    public int DFf { get; set; } = 2048;
    public int NumLayers { get; set; } = 6;
    public int? NumDecoderLayers { get; set; }
    public int NumHeads { get; set; } = 8;
    public int RelativeAttentionNumBuckets { get; set; } = 32;
    public int RelativeAttentionMaxDistance { get; set; } = 128;
    public double DropoutRate { get; set; } = 0.1;
    public double LayerNormEpsilon { get; set; } = 1e-6;
    public double InitializerFactor { get; set; } = 1.0;
    public string FeedForwardProj { get; set; } = "relu";
    public bool IsEncoderDecoder { get; set; } = true;
    public bool UseCache { get; set; } = true;
    public int PadTokenId { get; set; }
    public int EosTokenId { get; set; } = 1;
    public double ClassifierDropout { get; set; }
    /// <summary>Only affects the LM head (absent from an encoder); kept for completeness.</summary>
    public bool TieWordEmbeddings { get; set; } = true;
    public string? TorchDtype { get; set; }
    /// <summary>Normally absent or equal to the value derived from feed_forward_proj.</summary>
    [JsonPropertyName("dense_act_fn")] public string? DenseActFn { get; set; }
    [JsonPropertyName("is_gated_act")] public bool? IsGatedAct { get; set; }

    // ---- Derived values (transformers T5Config.__init__) ----

    /// <summary>Attention inner width: heads · d_kv (may differ from d_model).</summary>
    public int InnerDim => NumHeads * DKv;

    /// <summary>The activation of the feed-forward: the file's dense_act_fn, else the last part of feed_forward_proj
    /// ("gated-gelu" is the backwards-compatible spelling of gated gelu_new).</summary>
    public string DenseActFnResolved =>
        DenseActFn ?? (FeedForwardProj == "gated-gelu" ? "gelu_new" : FeedForwardProj.Split('-')[^1]);

    /// <summary>Gated feed-forward (T5 v1.1: wi_0 through the activation times wi_1) or plain (original T5: wi).</summary>
    public bool IsGatedActResolved => IsGatedAct ?? FeedForwardProj.Split('-')[0] == "gated";

    /// <summary>Activations this port implements, by transformers' ACT2FN name.</summary>
    public static readonly IReadOnlyList<string> SupportedActivations = ["gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu"];

    public static T5Config Load(string path)
    {
        var c = ConfigJson.Load<T5Config>(path);
        c.Validate(path);
        return c;
    }

    /// <summary>Rejects configs transformers rejects and configs this port does not implement, naming the key.</summary>
    public void Validate(string source = "text encoder config")
    {
        void Bad(string msg) => throw new ModelConfigException(source, System.Text.RegularExpressions.Regex.Match(msg, "^[a-z_]+").Value is { Length: > 0 } k ? k : null, $"{source}: {msg}");
        void Limit(string key, long value, long min, long max)
        {
            if (value < min || value > max)
                throw new ModelConfigException(source, key, $"{source}: {key} is {value}; it must be {min}..{max}.");
        }

        if (ModelType is not (null or "t5"))
            throw new ModelConfigException(source, "model_type", $"{source}: model_type is '{ModelType}', not 't5'. PixArtSharp's text encoder is T5EncoderModel.");
        if (FeedForwardProj is null) Bad("feed_forward_proj must be given (e.g. 'gated-gelu').");
        var parts = FeedForwardProj!.Split('-');
        if ((parts.Length > 1 && parts[0] != "gated") || parts.Length > 2)
            Bad($"feed_forward_proj '{FeedForwardProj}' is not of the form 'gated-{{ACT_FN}}' or '{{ACT_FN}}' (e.g. 'gated-gelu' or 'relu').");
        if (!SupportedActivations.Contains(DenseActFnResolved))
            throw new ModelConfigException(source, "feed_forward_proj", $"{source}: the feed-forward activation '{DenseActFnResolved}' (feed_forward_proj '{FeedForwardProj}') is not supported; supported: {string.Join(", ", SupportedActivations)}.");
        // Real T5 v1.1 XXL: vocab 32128, d_model 4096, d_kv 64, d_ff 10240, 64 heads, 24 layers. Bounded before
        // anything is allocated from them.
        Limit("vocab_size", VocabSize, 1, 1 << 20);
        Limit("d_model", DModel, 1, 65536);
        Limit("d_kv", DKv, 1, 4096);
        Limit("d_ff", DFf, 1, 1 << 18);
        Limit("num_heads", NumHeads, 1, 1024);
        Limit("num_heads·d_kv", (long)NumHeads * DKv, 1, 65536);
        Limit("num_layers", NumLayers, 1, 1024);
        Limit("relative_attention_num_buckets", RelativeAttentionNumBuckets, 4, 1 << 16);
        Limit("relative_attention_max_distance", RelativeAttentionMaxDistance, 1, 1 << 24);
        if (VocabSize <= 0) Bad("vocab_size must be positive.");
        if (DModel <= 0 || DKv <= 0 || DFf <= 0 || NumHeads <= 0)
            Bad("d_model, d_kv, d_ff and num_heads must be positive.");
        if (NumLayers < 1) Bad("num_layers must be at least 1 (block 0 holds the relative attention bias).");
        if (RelativeAttentionNumBuckets < 4 || RelativeAttentionNumBuckets % 2 != 0)
            Bad($"relative_attention_num_buckets {RelativeAttentionNumBuckets} must be an even number ≥ 4 (bidirectional buckets).");
        if (RelativeAttentionMaxDistance <= RelativeAttentionNumBuckets / 4)
            Bad($"relative_attention_max_distance {RelativeAttentionMaxDistance} must exceed num_buckets/4 = {RelativeAttentionNumBuckets / 4}.");
        if (!(LayerNormEpsilon > 0) || !double.IsFinite(LayerNormEpsilon)) Bad("layer_norm_epsilon must be a finite positive number.");
    }
}
