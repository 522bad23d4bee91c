using PixArtSharp.Loading;
using PixArtSharp.Loading.Gguf;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

// transformers' T5EncoderModel (v4.42.4, modeling_t5.py), the PixArt-α text encoder (T5 v1.1 XXL: 4.7B
// parameters). Eval mode only: every dropout is the identity.
//
// Precision scheme when the weights are held in bf16 or fp16 (Weights.DType). fp32 weights run exactly the
// reference arithmetic.
// - The residual stream stays fp32 across all blocks. T5 v1.1 activations grow past fp16's range (65504) in
//   the deep blocks, and an fp32 residual also avoids bf16's 8-bit mantissa accumulating over 48 additions.
//   transformers instead clamps fp16 hidden states to ±(65504−1000) after each layer; with an fp32 residual
//   no clamp is needed.
// - T5LayerNorm computes its variance and the normalisation in fp32, then casts to the weight dtype and
//   multiplies by the weight there, as transformers does; its output feeds the projections.
// - Projections (q, k, v, o, wi_0, wi_1) multiply in the weight dtype: that is where the time goes.
// - Attention scores, the position bias + mask and the softmax are fp32 (T5 attention is unscaled, so the
//   logits are large; the attention matmuls are ~0.5% of the FLOPs at 120 tokens, so this costs nothing).
//   The relative_attention_bias table is held in fp32 (32×heads values).
// - The gated product act(wi_0 x)·wi_1 x is formed in fp32. For fp16, `wo` is held in fp32 and multiplies in
//   fp32, as transformers' `_keep_in_fp32_modules = ["wo"]` does for fp16 models: its output is where fp16
//   T5 overflows. bf16 has fp32's exponent range, so for bf16 `wo` stays bf16 (as in transformers) and memory
//   stays at 2 bytes/parameter.
// - The final RMSNorm is fp32 (its weight is held in fp32): the output is fp32 last_hidden_state.
//
// GGUF (FromGguf): the projections and the embedding stay encoded (Q8_0, Q4_K, …) in the file's memory mapping,
// and each is decoded to its dtype above when it runs (T5Linear: on the CPU a tile of rows at a time, one tile per
// core, multiplied at once; the embedding: only the rows looked up): the T5 costs the file's size plus a few tiles,
// never the whole model in bf16. The arithmetic is then that of a model whose weights are the decoded values, held in
// the dtype (the tiles' GEMMs sum in another order than one whole-matrix GEMM: at most one bf16 step apart).

/// <summary>
/// The T5 encoder stack: token embedding (<c>shared</c>), <c>encoder.block.{i}</c>, <c>encoder.final_layer_norm</c>.
/// <see cref="forward"/> returns <c>last_hidden_state</c> [B, L, d_model] in fp32.
/// </summary>
internal sealed class T5EncoderModel : IDisposable, ISequentialModel
{
    public readonly T5Config config;
    private readonly Tensor? _shared;
    /// <summary><c>shared.weight</c> still encoded (GGUF): rows are decoded per lookup. Null when <see cref="shared"/> is held.</summary>
    public readonly QuantizedTensor? shared_quantized;
    private readonly ScalarType _dtype;
    public readonly T5Stack encoder;

    /// <summary><c>shared.weight</c> [vocab, d_model]: the token embedding table (nn.Embedding). Absent for a GGUF
    /// model whose embedding stays encoded (<see cref="shared_quantized"/>).</summary>
    public Tensor shared => _shared ?? throw new InvalidOperationException("This T5's embedding is held encoded (GGUF): see shared_quantized.");

    private const string SharedKey = "shared.weight";
    private const string TiedKey = "encoder.embed_tokens.weight";

    /// <summary>
    /// Builds the encoder from weights keyed as transformers saves them. The embedding is <c>shared.weight</c>;
    /// the tied <c>encoder.embed_tokens.weight</c> is the same parameter: when present it is shape-checked and
    /// marked used but not kept, and when <c>shared.weight</c> is absent it is the embedding. Checks that no stored
    /// weight is left unused.
    /// </summary>
    public T5EncoderModel(T5Config config, Weights w)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(w);
        config.Validate();
        this.config = config;
        // A source that claims every key (Weights.Random) would otherwise materialise a second random table.
        bool claimsEverything = w.ClaimsEveryKey;
        bool hasShared = w.Contains(SharedKey);
        bool hasTied = !claimsEverything && w.Contains(TiedKey);
        var embKey = hasShared || !hasTied ? SharedKey : TiedKey;
        _dtype = w.DType;
        shared_quantized = w.TryGetQuantized(embKey, w.DType, [config.VocabSize, config.DModel]);
        if (shared_quantized is null) _shared = w.Get(embKey, config.VocabSize, config.DModel);
        try
        {
            if (hasShared && hasTied)
            {
                // Tied in transformers (encoder.embed_tokens is shared): same parameter, so only its shape is checked.
                w.Get(TiedKey, config.VocabSize, config.DModel).Dispose();
            }
            encoder = new T5Stack(w.Sub("encoder"), config);
        }
        catch
        {
            _shared?.Dispose();
            shared_quantized?.Dispose();
            throw;
        }
        try { w.CheckAllUsed(); }
        catch { Dispose(); throw; }
    }

    /// <summary>
    /// Loads <c>text_encoder/</c> of a diffusers folder: <c>config.json</c> and <c>model[.variant].safetensors</c>
    /// (or the shards named by <c>model.safetensors.index[.variant].json</c>), held in <paramref name="dtype"/>.
    /// </summary>
    /// <param name="load">How weights are read (<see cref="WeightLoadOptions.Copied"/> for a long-lived process).</param>
    public static T5EncoderModel FromFolder(string textEncoderDir, string? variant, ScalarType dtype, Device? device = null, WeightLoadOptions? load = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(textEncoderDir);
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype must be Float32, BFloat16 or Float16, not {dtype}.", nameof(dtype));
        var config = T5Config.Load(Path.Combine(textEncoderDir, "config.json"));
        using var w = ModelFolder.OpenWeights(textEncoderDir, "model", variant, dtype, device, load);
        return new T5EncoderModel(config, w);
    }

    /// <summary>
    /// Loads a T5 encoder from a GGUF file (llama.cpp's <c>t5encoder</c>, e.g. city96/t5-v1_1-xxl-encoder-gguf): the
    /// config from its metadata (<see cref="ConfigFromGguf"/>); projections and embedding stay encoded and are decoded
    /// to <paramref name="dtype"/> when they run; norms and the relative bias are decoded once. Errors are
    /// <see cref="GgufFileException"/>s naming the file and the fix.
    /// </summary>
    public static T5EncoderModel FromGguf(string path, ScalarType dtype, Device? device = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype must be Float32, BFloat16 or Float16, not {dtype}.", nameof(dtype));
        var file = GgufFile.Open(path);
        try
        {
            var config = GgufT5.ReadConfig(file);
            using var w = GgufT5.OpenWeights(file, config, dtype, device);   // disposes the file; views keep the mapping
            return new T5EncoderModel(config, w);
        }
        finally { file.Dispose(); }
    }

    /// <summary>The <see cref="T5Config"/> a T5 GGUF file implies (checked against its tensor table); reads only the header.</summary>
    public static T5Config ConfigFromGguf(string path)
    {
        using var file = GgufFile.Open(path);
        return GgufT5.ReadConfig(file);
    }

    public Device device => _shared?.device ?? shared_quantized!.device;

    /// <summary>
    /// Moves every weight to <paramref name="device"/>, disposing the old tensors (nn.Module.to(device)): the step
    /// model CPU offload takes before and after this component's stage (<see cref="OffloadPolicy"/>).
    /// </summary>
    public void MoveTo(Device device) => ModuleTensors.MoveTo(this, device);

    /// <summary>The encoder's blocks (sequential offload moves them one at a time).</summary>
    public IReadOnlyList<object> OffloadBlocks => encoder.block;
    public BlockScope? OnBlock { get => encoder.OnBlock; set => encoder.OnBlock = value; }
    public ScalarType dtype => _dtype;

    /// <summary>last_hidden_state [B, L, d_model] fp32.</summary>
    /// <param name="inputIds">[B, L] int64 token ids</param>
    /// <param name="attentionMask">[B, L], 1 = token, 0 = padding (any numeric or bool dtype)</param>
    /// <param name="trace">
    /// Optional: called with the fixture names of intermediates, all fp32: <c>embeddings</c> [B,L,D],
    /// <c>position_bias</c> [1,H,L,L] (block 0's relative bias, without the mask), <c>block.{i}.output</c> [B,L,D]
    /// (before the final norm). The tensor belongs to this call's dispose scope: use
    /// <c>t.clone().DetachFromDisposeScope()</c> to keep it.
    /// </param>
    public Tensor forward(Tensor inputIds, Tensor attentionMask, Action<string, Tensor>? trace = null)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        ArgumentNullException.ThrowIfNull(attentionMask);
        if (inputIds.dim() != 2 || inputIds.shape[0] == 0 || inputIds.shape[1] == 0)
            throw new ArgumentException($"inputIds must be a non-empty [batch, length] tensor; got shape [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (inputIds.dtype != ScalarType.Int64)
            throw new ArgumentException($"inputIds must be int64 token ids; got {inputIds.dtype}.", nameof(inputIds));
        if (!attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attentionMask must have the shape of inputIds [{string.Join(", ", inputIds.shape)}]; got [{string.Join(", ", attentionMask.shape)}].", nameof(attentionMask));

        using var scope = torch.NewDisposeScope();
        var ids = inputIds.to(device);
        var mask = attentionMask.to(ScalarType.Float32, device);
        long lo = ids.min().item<long>(), hi = ids.max().item<long>();
        if (lo < 0 || hi >= config.VocabSize)
            throw new ArgumentException($"inputIds must lie in [0, {config.VocabSize}) (vocab_size); got values from {lo} to {hi}.", nameof(inputIds));
        if (mask.ne(0).logical_and(mask.ne(1)).any().item<bool>())
            throw new ArgumentException("attentionMask must hold only 0 (padding) and 1 (token).", nameof(attentionMask));
        long B = ids.shape[0], L = ids.shape[1];

        // 1. Token embeddings (shared == encoder.embed_tokens), into the fp32 residual stream.
        var rows = _shared is not null
            ? _shared.index_select(0, ids.reshape(-1))                                                  // [B·L, D] dtype
            : shared_quantized!.DequantizeRows(ids.reshape(-1), _dtype);                               // only the rows used
        var h = rows.view(B, L, config.DModel).to(ScalarType.Float32);                                   // [B, L, D]
        trace?.Invoke("embeddings", h);

        // 2. The encoder stack. With block-encoded CPU projections (GGUF) those linears spread their tiles over the
        //    cores themselves; libtorch stays on one thread here so that its idle OpenMP workers do not spin on them.
        Tensor output;
        using (QuantizedOnCpu ? GgmlTiledLinear.CallerSingleThreaded() : null)
            output = encoder.forward(h, mask, trace);                                                   // [B, L, D]
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>Whether the projections are block-encoded CPU weights (a GGUF file, decoded tile by tile as they run).</summary>
    private bool QuantizedOnCpu => encoder.block.Length > 0 && encoder.block[0].layer_0.SelfAttention.q.weight_quantized is { } q
                                   && q.device.type == DeviceType.CPU;

    public void Dispose()
    {
        _shared?.Dispose();
        shared_quantized?.Dispose();
        encoder.Dispose();
    }
}

/// <summary><c>encoder</c>: the blocks and the final RMSNorm. Block 0 owns the relative attention bias, which
/// every block reuses.</summary>
internal sealed class T5Stack : IDisposable
{
    public readonly T5Block[] block;
    public readonly T5LayerNorm final_layer_norm;
    /// <summary>Around each block's forward (sequential offload, set by OffloadPolicy.Stage); null otherwise.</summary>
    public BlockScope? OnBlock { get; set; }

    public T5Stack(Weights w, T5Config config)
    {
        block = new T5Block[config.NumLayers];
        try
        {
            for (int i = 0; i < block.Length; i++)
                block[i] = new T5Block(w.Sub($"block.{i}"), config, hasRelativeAttentionBias: i == 0);
            // fp32 weight: the output is fp32 and feeds the transformer's caption projection.
            final_layer_norm = new T5LayerNorm(w.Sub("final_layer_norm"), config.DModel, config.LayerNormEpsilon, ScalarType.Float32);
        }
        catch
        {
            foreach (var b in block) b?.Dispose();
            throw;
        }
    }

    /// <param name="h">embeddings [B, L, D] fp32</param>
    /// <param name="mask">attention mask [B, L] fp32 0/1</param>
    public Tensor forward(Tensor h, Tensor mask, Action<string, Tensor>? trace = null)
    {
        using var scope = torch.NewDisposeScope();
        long L = h.shape[1];

        // 1. Block 0's relative position bias [1, H, L, L], computed once and shared by every block.
        Tensor positionBias;
        using (OnBlock?.Invoke(block[0])) positionBias = block[0].layer_0.SelfAttention.compute_bias(L, L);
        trace?.Invoke("position_bias", positionBias);

        // 2. The padding mask, added to the bias: (1 − mask)·finfo(f32).min on the keys → [B, H, L, L].
        var extended = mask.unsqueeze(1).unsqueeze(1).neg().add_(1.0).mul_(torch.finfo(ScalarType.Float32).min);   // [B, 1, 1, L]
        var bias = positionBias + extended;

        // 3. Blocks, on the fp32 residual stream.
        for (int i = 0; i < block.Length; i++)
        {
            using (OnBlock?.Invoke(block[i])) h = block[i].forward(h, bias);   // sequential offload: block i on the device for its forward
            trace?.Invoke($"block.{i}.output", h);
        }

        // 4. Final RMSNorm (dropout is the identity).
        return final_layer_norm.forward(h).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var b in block) b.Dispose();
        final_layer_norm.Dispose();
    }
}

/// <summary><c>encoder.block.{i}</c>: self-attention (<c>layer.0</c>) then feed-forward (<c>layer.1</c>).</summary>
internal sealed class T5Block : IDisposable
{
    /// <summary>Checkpoint key <c>layer.0</c>.</summary>
    public readonly T5LayerSelfAttention layer_0;
    /// <summary>Checkpoint key <c>layer.1</c>.</summary>
    public readonly T5LayerFF layer_1;

    public T5Block(Weights w, T5Config config, bool hasRelativeAttentionBias)
    {
        layer_0 = new T5LayerSelfAttention(w.Sub("layer.0"), config, hasRelativeAttentionBias);
        try { layer_1 = new T5LayerFF(w.Sub("layer.1"), config); }
        catch { layer_0.Dispose(); throw; }
    }

    /// <param name="h">[B, L, D] fp32 residual stream</param>
    /// <param name="bias">position bias + mask [B, H, L, L] fp32</param>
    public Tensor forward(Tensor h, Tensor bias)
    {
        using var scope = torch.NewDisposeScope();
        h = layer_0.forward(h, bias);
        h = layer_1.forward(h);
        return h.MoveToOuterDisposeScope();
    }

    public void Dispose() { layer_0.Dispose(); layer_1.Dispose(); }
}

/// <summary><c>layer.0</c>: pre-norm self-attention with a residual connection.</summary>
internal sealed class T5LayerSelfAttention : IDisposable
{
    public readonly T5Attention SelfAttention;
    public readonly T5LayerNorm layer_norm;

    public T5LayerSelfAttention(Weights w, T5Config config, bool hasRelativeAttentionBias)
    {
        SelfAttention = new T5Attention(w.Sub("SelfAttention"), config, hasRelativeAttentionBias);
        try { layer_norm = new T5LayerNorm(w.Sub("layer_norm"), config.DModel, config.LayerNormEpsilon, w.DType); }
        catch { SelfAttention.Dispose(); throw; }
    }

    public Tensor forward(Tensor h, Tensor bias)
    {
        using var scope = torch.NewDisposeScope();
        var normed = layer_norm.forward(h);                        // [B, L, D] weight dtype
        var attn = SelfAttention.forward(normed, bias);            // [B, L, D] weight dtype
        // fp32 + bf16/fp16 promotes to fp32: the residual stays fp32 without a separate cast.
        return (h + attn).MoveToOuterDisposeScope();
    }

    public void Dispose() { SelfAttention.Dispose(); layer_norm.Dispose(); }
}

/// <summary>
/// <c>SelfAttention</c>: bias-free q/k/v/o projections, unscaled dot-product attention (T5 folds 1/√d_kv into
/// the initialisation of q), and in block 0 the bucketed relative position bias table.
/// </summary>
internal sealed class T5Attention : IDisposable
{
    public readonly T5Linear q, k, v, o;
    /// <summary><c>relative_attention_bias.weight</c> [num_buckets, heads] (nn.Embedding), fp32; block 0 only.</summary>
    public readonly Tensor? relative_attention_bias;
    private readonly int _heads, _dkv, _numBuckets, _maxDistance;

    public T5Attention(Weights w, T5Config config, bool hasRelativeAttentionBias)
    {
        _heads = config.NumHeads;
        _dkv = config.DKv;
        _numBuckets = config.RelativeAttentionNumBuckets;
        _maxDistance = config.RelativeAttentionMaxDistance;
        long inner = config.InnerDim, d = config.DModel;
        var made = new List<IDisposable>();
        try
        {
            q = new T5Linear(w.Sub("q"), d, inner, w.DType); made.Add(q);
            k = new T5Linear(w.Sub("k"), d, inner, w.DType); made.Add(k);
            v = new T5Linear(w.Sub("v"), d, inner, w.DType); made.Add(v);
            o = new T5Linear(w.Sub("o"), inner, d, w.DType); made.Add(o);
            if (hasRelativeAttentionBias)
                relative_attention_bias = w.Sub("relative_attention_bias").GetFloat32("weight", _numBuckets, _heads);
        }
        catch
        {
            foreach (var m in made) m.Dispose();
            throw;
        }
    }

    /// <param name="x">normed hidden states [B, L, D] in the weight dtype</param>
    /// <param name="bias">position bias + mask [B or 1, H, L, L] fp32</param>
    /// <returns>[B, L, D] in the weight dtype</returns>
    public Tensor forward(Tensor x, Tensor bias)
    {
        using var scope = torch.NewDisposeScope();
        long B = x.shape[0], L = x.shape[1];

        // 1. Projections in the weight dtype, split into heads, attention in fp32.
        Tensor Heads(T5Linear proj) => proj.forward(x).view(B, L, _heads, _dkv).transpose(1, 2).to(ScalarType.Float32);   // [B, H, L, dkv]
        var qh = Heads(q);
        var kh = Heads(k);
        var vh = Heads(v);

        // 2. Unscaled scores + (position bias + mask), softmax in fp32.
        //    scores = torch.matmul(q, k.transpose(3, 2)); scores += position_bias_masked
        var scores = qh.matmul(kh.transpose(2, 3)).add_(bias);                                   // [B, H, L, L]
        var weights = scores.softmax(-1);

        // 3. Weighted values, heads merged, output projection.
        var attn = weights.matmul(vh).transpose(1, 2).reshape(B, L, (long)_heads * _dkv);       // [B, L, inner]
        return o.forward(attn.to(o.dtype)).MoveToOuterDisposeScope();                      // [B, L, D]
    }

    /// <summary>Block 0's position bias [1, H, qLen, kLen] (fp32), from the bidirectional bucket of key − query.</summary>
    public Tensor compute_bias(long queryLength, long keyLength)
    {
        if (relative_attention_bias is null)
            throw new InvalidOperationException("Only block 0's attention holds the relative position bias.");
        using var scope = torch.NewDisposeScope();
        var dev = relative_attention_bias.device;
        var context = torch.arange(queryLength, ScalarType.Int64, dev).unsqueeze(1);
        var memory = torch.arange(keyLength, ScalarType.Int64, dev).unsqueeze(0);
        var bucket = RelativePositionBucket(memory - context, bidirectional: true, _numBuckets, _maxDistance);   // [q, k]
        var values = relative_attention_bias.index_select(0, bucket.reshape(-1)).view(queryLength, keyLength, _heads);
        return values.permute(2, 0, 1).unsqueeze(0).contiguous().MoveToOuterDisposeScope();                       // [1, H, q, k]
    }

    /// <summary>
    /// T5's relative position buckets (Mesh TensorFlow): half the buckets per direction when bidirectional;
    /// distances below num_buckets/2 (per direction) get their own bucket, larger ones share log-spaced buckets
    /// up to max_distance. Computed with the same float32 operations as transformers so edges match.
    /// </summary>
    public static Tensor RelativePositionBucket(Tensor relativePosition, bool bidirectional, int numBuckets, int maxDistance)
    {
        using var scope = torch.NewDisposeScope();
        var buckets = torch.zeros_like(relativePosition);
        var rel = relativePosition;
        if (bidirectional)
        {
            numBuckets /= 2;
            buckets = buckets + rel.gt(0).to(ScalarType.Int64) * numBuckets;
            rel = rel.abs();
        }
        else
        {
            rel = -torch.minimum(rel, torch.zeros_like(rel));
        }
        int maxExact = numBuckets / 2;
        var isSmall = rel.lt(maxExact);
        // max_exact + (log(rel / max_exact) / log(max_distance / max_exact) * (num_buckets - max_exact)).long()
        var large = (rel.to(ScalarType.Float32) / maxExact).log_()
            .div_(Math.Log((double)maxDistance / maxExact))
            .mul_(numBuckets - maxExact)
            .to(ScalarType.Int64)
            .add_(maxExact)
            .clamp_max_(numBuckets - 1);
        return (buckets + torch.where(isSmall, rel, large)).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        q.Dispose(); k.Dispose(); v.Dispose(); o.Dispose();
        relative_attention_bias?.Dispose();
    }
}

/// <summary><c>layer.1</c>: pre-norm feed-forward with a residual connection.</summary>
internal sealed class T5LayerFF : IDisposable
{
    public readonly T5DenseReluDense DenseReluDense;
    public readonly T5LayerNorm layer_norm;

    public T5LayerFF(Weights w, T5Config config)
    {
        DenseReluDense = new T5DenseReluDense(w.Sub("DenseReluDense"), config);
        try { layer_norm = new T5LayerNorm(w.Sub("layer_norm"), config.DModel, config.LayerNormEpsilon, w.DType); }
        catch { DenseReluDense.Dispose(); throw; }
    }

    public Tensor forward(Tensor h)
    {
        using var scope = torch.NewDisposeScope();
        var normed = layer_norm.forward(h);                // [B, L, D] weight dtype
        var ff = DenseReluDense.forward(normed);           // [B, L, D] wo's dtype
        return (h + ff).MoveToOuterDisposeScope();         // fp32 residual (type promotion)
    }

    public void Dispose() { DenseReluDense.Dispose(); layer_norm.Dispose(); }
}

/// <summary>
/// <c>DenseReluDense</c>: transformers' T5DenseGatedActDense (T5 v1.1, "gated-gelu": <c>wo(act(wi_0 x) · wi_1 x)</c>)
/// or T5DenseActDense (original T5, "relu": <c>wo(act(wi x))</c>).
/// </summary>
internal sealed class T5DenseReluDense : IDisposable
{
    public readonly T5Linear? wi;
    public readonly T5Linear? wi_0, wi_1;
    public readonly T5Linear wo;
    private readonly string _act;

    public T5DenseReluDense(Weights w, T5Config config)
    {
        _act = config.DenseActFnResolved;
        long d = config.DModel, ff = config.DFf;
        var made = new List<IDisposable>();
        try
        {
            if (config.IsGatedActResolved)
            {
                wi_0 = new T5Linear(w.Sub("wi_0"), d, ff, w.DType); made.Add(wi_0);
                wi_1 = new T5Linear(w.Sub("wi_1"), d, ff, w.DType); made.Add(wi_1);
            }
            else
            {
                wi = new T5Linear(w.Sub("wi"), d, ff, w.DType); made.Add(wi);
            }
            // fp16: wo in fp32 (transformers' _keep_in_fp32_modules); see the precision notes at the top.
            var woType = w.DType == ScalarType.Float16 ? ScalarType.Float32 : w.DType;
            wo = new T5Linear(w.Sub("wo"), ff, d, woType);
        }
        catch
        {
            foreach (var m in made) m.Dispose();
            throw;
        }
    }

    /// <param name="x">normed hidden states [B, L, D] in the weight dtype</param>
    /// <returns>[B, L, D] in wo's dtype</returns>
    public Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        // 1. Up-projection(s) in the weight dtype; activation and gate product in fp32.
        Tensor hidden;                                                               // [B, L, d_ff] fp32
        if (wi_0 is not null)
            hidden = Act(wi_0.forward(x).to(ScalarType.Float32)).mul_(wi_1!.forward(x).to(ScalarType.Float32));
        else
            hidden = Act(wi!.forward(x).to(ScalarType.Float32));

        // 2. Down-projection in wo's dtype.
        return wo.forward(hidden.to(wo.dtype)).MoveToOuterDisposeScope();    // [B, L, D]
    }

    private Tensor Act(Tensor x) => _act switch
    {
        // gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh approximation.
        "gelu_new" or "gelu_pytorch_tanh" => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "gelu" => F.gelu(x),
        "relu" => F.relu(x),
        "silu" => F.silu(x),
        _ => throw new NotSupportedException($"T5 feed-forward activation '{_act}' is not supported."),
    };

    public void Dispose() { wi?.Dispose(); wi_0?.Dispose(); wi_1?.Dispose(); wo.Dispose(); }
}

/// <summary>
/// A bias-free nn.Linear whose weight is held in a chosen dtype, which may differ from the Weights' dtype
/// (T5 keeps <c>wo</c> in fp32 for fp16 models). From a GGUF file the weight stays encoded
/// (<see cref="weight_quantized"/>) and is decoded to that dtype for each call, then freed.
/// </summary>
internal sealed class T5Linear : IDisposable
{
    private readonly Tensor? _weight;
    /// <summary>The weight still encoded (GGUF), or null when <see cref="weight"/> is held.</summary>
    public readonly QuantizedTensor? weight_quantized;
    /// <summary>The dtype the layer computes in (its weight's, decoded or held).</summary>
    public readonly ScalarType dtype;

    public T5Linear(Weights w, long inFeatures, long outFeatures, ScalarType dtype)
    {
        this.dtype = dtype;
        weight_quantized = w.TryGetQuantized("weight", dtype, [outFeatures, inFeatures]);
        if (weight_quantized is null) _weight = w.Get("weight", dtype, [outFeatures, inFeatures]);
        else weight_quantized.Populate();   // every row of a projection is read by each forward: map it in at load
    }

    /// <summary><c>weight</c> [out, in] as held; a GGUF layer holds it encoded (<see cref="weight_quantized"/>) instead.</summary>
    public Tensor weight => _weight ?? throw new InvalidOperationException($"This layer's weight is held encoded ({weight_quantized!.Type}): use weight_quantized.Dequantize(dtype).");

    public Tensor forward(Tensor x)
    {
        if (_weight is not null) return F.linear(x, _weight);
        // Decoded to the compute dtype as it runs (a tile of rows at a time on the CPU; elsewhere the whole [out, in]
        // matrix, freed after use): never more than one matrix of this layer.
        return weight_quantized!.Linear(x, dtype);
    }

    public void Dispose() { _weight?.Dispose(); weight_quantized?.Dispose(); }
}

/// <summary>
/// T5LayerNorm (RMSNorm): <c>weight · x / √(mean(x²) + eps)</c>, no mean subtraction, no bias. The variance and
/// normalisation are fp32; the result is cast to the weight's dtype before the weight multiply, as in transformers.
/// </summary>
internal sealed class T5LayerNorm : IDisposable
{
    public readonly Tensor weight;
    private readonly double _eps;

    public T5LayerNorm(Weights w, long dim, double eps, ScalarType dtype)
    {
        weight = w.Get("weight", dtype, [dim]);
        _eps = eps;
    }

    /// <param name="h">[…, D], any float dtype</param>
    /// <returns>[…, D] in the weight's dtype</returns>
    public Tensor forward(Tensor h)
    {
        using var scope = torch.NewDisposeScope();
        var h32 = h.to(ScalarType.Float32);
        var variance = h32.pow(2).mean([-1], keepdim: true);
        var normed = h32 * (variance + _eps).rsqrt_();
        if (weight.dtype != ScalarType.Float32) normed = normed.to(weight.dtype);
        return (weight * normed).MoveToOuterDisposeScope();
    }

    public void Dispose() => weight.Dispose();
}
