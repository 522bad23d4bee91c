using System.Globalization;
using PixArtSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// A T5 encoder stored as GGUF the way llama.cpp writes it (and ComfyUI-GGUF reads it, e.g.
/// city96/t5-v1_1-xxl-encoder-gguf): architecture <c>t5encoder</c> (or a full <c>t5</c>, whose decoder is ignored),
/// hyper-parameters under <c>{arch}.*</c>, tensors under llama.cpp's names. This class maps those names to
/// transformers' checkpoint keys, derives the <see cref="T5Config"/>, and checks the tensor table against it before
/// any model is built, so a wrong file is one <see cref="GgufFileException"/> in GGUF's own names.
/// </summary>
internal static class GgufT5
{
    /// <summary>ComfyUI-GGUF's T5_SD_MAP (loader.py), applied in this order as successive replacements.</summary>
    public static readonly IReadOnlyList<(string Gguf, string Transformers)> NameMap =
    [
        ("enc.", "encoder."), (".blk.", ".block."), ("token_embd", "shared"), ("output_norm", "final_layer_norm"),
        ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"), ("attn_v", "layer.0.SelfAttention.v"),
        ("attn_o", "layer.0.SelfAttention.o"), ("attn_norm", "layer.0.layer_norm"),
        ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
        ("ffn_up", "layer.1.DenseReluDense.wi_1"), ("ffn_down", "layer.1.DenseReluDense.wo"),
        ("ffn_gate", "layer.1.DenseReluDense.wi_0"), ("ffn_norm", "layer.1.layer_norm"),
    ];

    /// <summary>Architectures read: llama.cpp's encoder-only T5 and its full T5 (decoder tensors ignored).</summary>
    public static readonly IReadOnlyList<string> Architectures = ["t5encoder", "t5"];

    /// <summary>transformers' key for a llama.cpp T5 tensor name. In a non-gated T5 (no ffn_gate), ffn_up is <c>wi</c>.</summary>
    public static string ToTransformersName(string ggufName, bool gated)
    {
        string key = ggufName;
        foreach (var (from, to) in NameMap)
            key = key.Replace(from, gated || from != "ffn_up" ? to : "layer.1.DenseReluDense.wi");
        return key;
    }

    /// <summary>The config a T5 GGUF file implies (metadata first, tensor shapes where a key is absent), after checking
    /// that its architecture is a T5 encoder and that its tensor table is exactly that model's.</summary>
    public static T5Config ReadConfig(GgufFile file)
    {
        string path = file.FilePath;
        string? arch = file.Architecture;
        if (arch is null)
            throw Fail(path, "it has no general.architecture", "Use a T5 encoder GGUF converted by llama.cpp (e.g. city96/t5-v1_1-xxl-encoder-gguf)");
        if (!Architectures.Contains(arch))
            throw Fail(path, $"its architecture is '{arch}', not a T5 encoder ({string.Join(" or ", Architectures)})", "PixArt's text encoder is T5 v1.1 XXL: use a T5 encoder GGUF (e.g. city96/t5-v1_1-xxl-encoder-gguf)");

        CheckSupportedTypes(file);
        var t = file.Tensors;
        if (!t.TryGetValue("token_embd.weight", out var emb) || emb.Dims.Length != 2)
            throw Fail(path, "it has no 2-D tensor 'token_embd.weight' (the token embedding)", "The file is not a complete T5 encoder; download it again");
        if (emb.Dims[1] > int.MaxValue)
            throw Fail(path, $"its token embedding has {emb.Dims[1]} rows", "The file is not a T5 encoder; download it again");
        int Meta(string key, long? fallback)
        {
            string full = $"{arch}.{key}";
            if (file.Metadata.TryGetValue(full, out var v))
            {
                if (v.AsInt64() is not { } n || n <= 0 || n > int.MaxValue)
                    throw Fail(path, $"metadata {full} is {v} ({v.Type}), not a positive integer", "Convert the model again with llama.cpp");
                return (int)n;
            }
            if (fallback is { } f and > 0 and <= int.MaxValue) return (int)f;
            throw Fail(path, $"it has no metadata {full}, and the tensors do not imply it", "Convert the model again with llama.cpp");
        }
        long? Dim(string name, int i) => t.TryGetValue(name, out var ti) && ti.Dims.Length > i ? ti.Dims[i] : null;

        int dModel = Meta("embedding_length", emb.Dims[0]);
        int layers = Meta("block_count", t.Keys.Count(k => k.StartsWith("enc.blk.", StringComparison.Ordinal) && k.EndsWith(".attn_q.weight", StringComparison.Ordinal)));
        // Each block is at least 9 tensors: a count beyond that is a corrupt value, not a model to enumerate.
        if (layers > file.TensorList.Count / 9)
            throw Fail(path, $"metadata {arch}.block_count is {layers} but the file holds only {file.TensorList.Count} tensors", "The file is corrupt; download it again");
        int heads = Meta("attention.head_count", Dim("enc.blk.0.attn_rel_b.weight", 0));
        int dKv = Meta("attention.key_length", Dim("enc.blk.0.attn_q.weight", 1) / heads);
        int dFf = Meta("feed_forward_length", Dim("enc.blk.0.ffn_up.weight", 1));
        int buckets = Meta("attention.relative_buckets_count", Dim("enc.blk.0.attn_rel_b.weight", 1));
        double eps = 1e-6;
        if (file.Metadata.TryGetValue($"{arch}.attention.layer_norm_epsilon", out var e))
        {
            if (e.AsDouble() is not { } d || !(d > 0) || !double.IsFinite(d))
                throw Fail(path, $"metadata {arch}.attention.layer_norm_epsilon is {e}, not a positive number", "Convert the model again with llama.cpp");
            // Stored as f32 (1e-6 → 9.99999997e-7): the shortest decimal of that float is the config's value.
            eps = e.Type == GgufValueType.Float32 ? double.Parse(((float)d).ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture) : d;
        }
        bool gated = t.ContainsKey("enc.blk.0.ffn_gate.weight");
        var config = new T5Config
        {
            ModelType = "t5",
            VocabSize = (int)emb.Dims[1],
            DModel = dModel,
            DKv = dKv,
            DFf = dFf,
            NumLayers = layers,
            NumHeads = heads,
            RelativeAttentionNumBuckets = buckets,
            // Not stored in GGUF; llama.cpp uses T5's 128 for every T5.
            RelativeAttentionMaxDistance = 128,
            LayerNormEpsilon = eps,
            // llama.cpp's T5: gated GELU (T5 v1.1) when ffn_gate is present, else ReLU (original T5).
            FeedForwardProj = gated ? "gated-gelu" : "relu",
        };
        try { config.Validate(path); }
        catch (WeightFileException ex) { throw new GgufFileException($"{ex.Message} (derived from the GGUF metadata)", ex); }
        CheckTensors(file, config);
        return config;
    }

    /// <summary>Every GGUF tensor the model needs, with its torch shape (outermost first).</summary>
    public static IEnumerable<(string Name, long[] Shape)> ExpectedTensors(T5Config c)
    {
        long d = c.DModel, inner = c.InnerDim, ff = c.DFf;
        yield return ("token_embd.weight", [c.VocabSize, d]);
        for (int i = 0; i < c.NumLayers; i++)
        {
            string b = $"enc.blk.{i}.";
            yield return (b + "attn_norm.weight", [d]);
            yield return (b + "attn_q.weight", [inner, d]);
            yield return (b + "attn_k.weight", [inner, d]);
            yield return (b + "attn_v.weight", [inner, d]);
            yield return (b + "attn_o.weight", [d, inner]);
            if (i == 0) yield return (b + "attn_rel_b.weight", [c.RelativeAttentionNumBuckets, c.NumHeads]);
            yield return (b + "ffn_norm.weight", [d]);
            if (c.IsGatedActResolved) yield return (b + "ffn_gate.weight", [ff, d]);
            yield return (b + "ffn_up.weight", [ff, d]);
            yield return (b + "ffn_down.weight", [d, ff]);
        }
        yield return ("enc.output_norm.weight", [d]);
    }

    /// <summary>Tensors of a full llama.cpp T5 that an encoder does not use.</summary>
    private static bool IsDecoderTensor(string name) => name.StartsWith("dec.", StringComparison.Ordinal) || name == "output.weight";

    private static void CheckSupportedTypes(GgufFile file)
    {
        string path = file.FilePath;
        bool full = file.Architecture == "t5";
        var unsupported = file.TensorList.Where(ti => !GgmlTypes.IsSupported(ti.Type) && !(full && IsDecoderTensor(ti.Name))).ToList();
        if (unsupported.Count > 0)
            throw Fail(path, $"tensor '{unsupported[0].Name}' is {GgmlTypes.Name(unsupported[0].Type)}"
                + (unsupported.Count > 1 ? $" (and {unsupported.Count - 1} more tensor(s) of types {string.Join(", ", unsupported.Select(u => GgmlTypes.Name(u.Type)).Distinct())})" : "")
                + $", a ggml type PixArtSharp does not decode (supported: {GgmlTypes.SupportedList})",
                "Use a GGUF file quantized to one of the supported types (e.g. Q8_0, Q5_K_M, Q4_K_M)");
    }

    private static void CheckTensors(GgufFile file, T5Config c)
    {
        string path = file.FilePath;
        var expected = ExpectedTensors(c).ToList();
        var missing = expected.Where(e => !file.Tensors.ContainsKey(e.Name)).Select(e => e.Name).ToList();
        if (missing.Count > 0)
            throw Fail(path, $"{missing.Count} tensor(s) of the T5 encoder its metadata describes ({c.NumLayers} blocks, d_model {c.DModel}) are missing, e.g. '{string.Join("', '", missing.Take(5))}'",
                "The file is incomplete or not a T5 encoder; download it again");
        foreach (var (name, shape) in expected)
        {
            var info = file.Tensors[name];
            if (!info.Shape.SequenceEqual(shape))
                throw Fail(path, $"tensor '{name}' has shape [{string.Join(", ", info.Shape)}] (GGUF dims [{string.Join(", ", info.Dims)}]) but its metadata implies [{string.Join(", ", shape)}]",
                    "The file's metadata does not fit its tensors; convert the model again with llama.cpp");
        }
        var names = expected.Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
        bool full = file.Architecture == "t5";
        var extra = file.TensorList.Where(ti => !names.Contains(ti.Name) && !(full && IsDecoderTensor(ti.Name))).Select(ti => ti.Name).ToList();
        if (extra.Count > 0)
            throw Fail(path, $"{extra.Count} tensor(s) do not belong to the T5 encoder its metadata describes, e.g. '{string.Join("', '", extra.Take(5))}'",
                "The file's metadata does not fit its tensors; convert the model again with llama.cpp");
    }

    /// <summary>
    /// The encoder's weights by transformers' keys: linear layers and the embedding as <see cref="QuantizedTensor"/>s
    /// (<see cref="Weights.TryGetQuantized"/>) unless already stored in <paramref name="dtype"/>; everything else
    /// decoded once.
    /// </summary>
    public static Weights OpenWeights(GgufFile file, T5Config config, ScalarType dtype, Device? device = null)
    {
        bool full = file.Architecture == "t5";
        var map = file.TensorList.Where(t => !(full && IsDecoderTensor(t.Name)))
            .ToDictionary(t => ToTransformersName(t.Name, config.IsGatedActResolved), t => t.Name, StringComparer.Ordinal);
        return Weights.FromGguf(file, map, dtype, device);
    }

    /// <summary>
    /// The check the pipeline makes before running: the encoder's width (d_model) must be the transformer's
    /// <c>caption_channels</c> (4096 for PixArt's T5 v1.1 XXL).
    /// </summary>
    public static void CheckFitsTransformer(string ggufPath, T5Config t5, long captionChannels)
    {
        if (t5.DModel != captionChannels)
            throw Fail(ggufPath, $"its T5 encoder is {t5.DModel} wide (d_model) but the transformer expects caption_channels = {captionChannels}",
                captionChannels == 4096 ? "PixArt uses T5 v1.1 XXL: use a t5-v1_1-xxl encoder GGUF (e.g. city96/t5-v1_1-xxl-encoder-gguf)" : "Use the T5 encoder this model was trained with");
    }

    private static GgufFileException Fail(string path, string what, string fix) => new($"{path} cannot be used as the T5 text encoder: {what}. {fix}.");
}
