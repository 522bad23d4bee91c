using PixArtSharp.Loading;
using PixArtSharp.Loading.Lora;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

// diffusers v0.29.2 PixArtTransformer2DModel (transformers/pixart_transformer_2d.py) with the pieces it uses:
// attention.py BasicTransformerBlock (norm_type "ada_norm_single") and FeedForward, attention_processor.py
// Attention with AttnProcessor2_0. Embeddings are in PixArtEmbeddings.cs.
//
// Precision: every matmul, conv, activation and attention runs in the weight dtype (Weights.DType). Kept in
// float32 whatever the weights: the timestep/size sinusoids (PixArtEmbeddings.TimestepSinusoid), the 2D position
// table (float64 → float32) and its addition to the patch tokens (as diffusers' PatchEmbed promotes it). LayerNorm
// and SDPA on bf16 accumulate their statistics / softmax in float32 inside libtorch (PixArtTransformerTests
// checks the LayerNorm claim), so they take bf16 tensors directly.

/// <summary>diffusers <c>Attention</c> (no norms, no residual inside) run as AttnProcessor2_0 does, with SDPA.</summary>
internal sealed class PixArtAttention : IDisposable
{
    public readonly Linear to_q;
    public readonly Linear to_k;
    public readonly Linear to_v;
    /// <summary>to_out.0 (to_out.1 is dropout).</summary>
    public readonly Linear[] to_out;
    private readonly long _heads, _headDim;

    public PixArtAttention(Weights w, long queryDim, long crossAttentionDim, long heads, long headDim, bool bias)
    {
        long inner = heads * headDim;
        to_q = new Linear(w.Sub("to_q"), queryDim, inner, bias);
        to_k = new Linear(w.Sub("to_k"), crossAttentionDim, inner, bias);
        to_v = new Linear(w.Sub("to_v"), crossAttentionDim, inner, bias);
        to_out = [new Linear(w.Sub("to_out.0"), inner, queryDim, bias: true)];
        _heads = heads;
        _headDim = headDim;
    }

    /// <param name="x">[B, N, D] queries</param>
    /// <param name="context">[B, L, Dc] keys/values (x itself for self-attention)</param>
    /// <param name="bias">additive score bias broadcastable to [B, heads, N, L], or null</param>
    public Tensor forward(Tensor x, Tensor context, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], n = x.shape[1], l = context.shape[1];
        // [B, N, heads·hd] → [B, heads, N, hd], made contiguous: libtorch's CPU SDPA is faster on contiguous heads
        // than on the strided views, copy included (measured by pixart bench's probe, (1, 16, 4096, 72) bf16 at load
        // 1.4: 0.579 s vs 0.654 s median of 5, interleaved; ≈ 2 s of a 1024 px step). Values are unchanged.
        var q = to_q.forward(x).view(b, n, _heads, _headDim).transpose(1, 2).contiguous();
        var k = to_k.forward(context).view(b, l, _heads, _headDim).transpose(1, 2).contiguous();
        var v = to_v.forward(context).view(b, l, _heads, _headDim).transpose(1, 2).contiguous();
        var o = Attention.Forward(q, k, v, bias);                                       // [B, heads, N, hd], scale 1/√hd
        o = o.transpose(1, 2).reshape(b, n, _heads * _headDim);                         // [B, N, D]
        return to_out[0].forward(o).MoveToOuterDisposeScope();
    }

    public void Dispose() { to_q.Dispose(); to_k.Dispose(); to_v.Dispose(); to_out[0].Dispose(); }
}

/// <summary>diffusers <c>FeedForward</c> with a GELU projection: net.0.proj → GELU → (net.1 dropout) → net.2.</summary>
internal sealed class PixArtFeedForward : IDisposable
{
    /// <summary>net.0 (GELU module holding proj), net.2 (Linear). net.1 is dropout and has no weights.</summary>
    public readonly Linear net_0_proj;
    public readonly Linear net_2;
    private readonly TorchSharp.Modules.GELU.Approximate _approximate;

    public PixArtFeedForward(Weights w, long dim, long innerDim, bool tanhGelu)
    {
        net_0_proj = new Linear(w.Sub("net.0.proj"), dim, innerDim);
        net_2 = new Linear(w.Sub("net.2"), innerDim, dim);
        _approximate = tanhGelu ? TorchSharp.Modules.GELU.Approximate.tanh : TorchSharp.Modules.GELU.Approximate.none;
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = net_0_proj.forward(x);                // [B, N, 4D]
        h = F.gelu(h, _approximate, inplace: true);   // h is ours: no second 4D-wide buffer
        return net_2.forward(h).MoveToOuterDisposeScope();
    }

    public void Dispose() { net_0_proj.Dispose(); net_2.Dispose(); }
}

/// <summary>
/// diffusers <c>BasicTransformerBlock</c> with norm_type "ada_norm_single" (PixArt-α): adaLN-modulated
/// self-attention, un-normalised cross-attention to the caption, adaLN-modulated feed-forward.
/// </summary>
internal sealed class PixArtTransformerBlock : IDisposable
{
    public readonly LayerNorm norm1;
    public readonly PixArtAttention attn1;
    public readonly PixArtAttention attn2;
    public readonly LayerNorm norm2;
    public readonly PixArtFeedForward ff;
    /// <summary>[6, D]: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp offsets.</summary>
    public readonly Tensor scale_shift_table;
    private readonly long _dim;

    public PixArtTransformerBlock(Weights w, PixArtTransformerConfig c)
    {
        long dim = c.InnerDim;
        _dim = dim;
        norm1 = new LayerNorm(c.NormElementwiseAffine ? w.Sub("norm1") : null, dim, c.NormEps, c.NormElementwiseAffine);
        attn1 = new PixArtAttention(w.Sub("attn1"), dim, dim, c.NumAttentionHeads, c.AttentionHeadDim, c.AttentionBias);
        attn2 = new PixArtAttention(w.Sub("attn2"), dim, c.CrossAttentionDim!.Value, c.NumAttentionHeads, c.AttentionHeadDim, c.AttentionBias);
        norm2 = new LayerNorm(c.NormElementwiseAffine ? w.Sub("norm2") : null, dim, c.NormEps, c.NormElementwiseAffine);
        ff = new PixArtFeedForward(w.Sub("ff"), dim, 4 * dim, c.ActivationFn == "gelu-approximate");
        scale_shift_table = w.Get("scale_shift_table", 6, dim);
    }

    /// <param name="x">[B, N, D] residual stream</param>
    /// <param name="caption">[B, L, D] projected caption</param>
    /// <param name="captionBias">[B, 1, 1, L] additive cross-attention bias</param>
    /// <param name="timestep">[B, 6D] adaLN-single output</param>
    public Tensor forward(Tensor x, Tensor caption, Tensor captionBias, Tensor timestep)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0];

        // 0. Modulation: scale_shift_table[None] + timestep.reshape(B, 6, D) → six [B, 1, D]
        var mod = scale_shift_table.unsqueeze(0).add(timestep.view(b, 6, _dim)).chunk(6, 1);
        Tensor shiftMsa = mod[0], scaleMsa = mod[1], gateMsa = mod[2], shiftMlp = mod[3], scaleMlp = mod[4], gateMlp = mod[5];

        // 1. Self-attention: norm1(x)·(1 + scale_msa) + shift_msa → attn1 → ·gate_msa → + x
        var h = norm1.forward(x).mul_(scaleMsa.add(1)).add_(shiftMsa);
        x = x.addcmul(attn1.forward(h, h, null), gateMsa, 1);

        // 2. Cross-attention on the raw residual stream (PixArt applies no norm here), masked by the caption bias.
        x = x.add(attn2.forward(x, caption, captionBias));

        // 3. Feed-forward: norm2(x)·(1 + scale_mlp) + shift_mlp → FF → ·gate_mlp → + x
        h = norm2.forward(x).mul_(scaleMlp.add(1)).add_(shiftMlp);
        x = x.addcmul(ff.forward(h), gateMlp, 1);

        return x.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        norm1.Dispose(); attn1.Dispose(); attn2.Dispose(); norm2.Dispose(); ff.Dispose(); scale_shift_table.Dispose();
    }
}

/// <summary>
/// The PixArt-α denoiser (diffusers <c>PixArtTransformer2DModel</c>): latents [B, 4, H, W] + T5 caption
/// embeddings + timestep (+ resolution and aspect ratio micro-conditions for the 1024 models) → noise prediction
/// and learned variance [B, 8, H, W].
/// </summary>
internal sealed class PixArtTransformer2DModel : IDisposable, ISequentialModel
{
    public const string WeightStem = "diffusion_pytorch_model";

    public readonly PatchEmbed pos_embed;
    public readonly PixArtTransformerBlock[] transformer_blocks;
    public readonly LayerNorm norm_out;
    /// <summary>[2, D]: final shift and scale offsets.</summary>
    public readonly Tensor scale_shift_table;
    public readonly Linear proj_out;
    public readonly AdaLayerNormSingle adaln_single;
    public readonly PixArtAlphaTextProjection caption_projection;

    public PixArtTransformerConfig Config { get; }
    /// <summary>The dtype everything but the fixed tables is computed in (the weights' dtype).</summary>
    public ScalarType DType { get; }
    public Device Device { get; }

    /// <summary>
    /// Moves every weight to <paramref name="device"/>, disposing the old tensors (nn.Module.to(device)): the step
    /// model CPU offload takes before and after this component's stage (<see cref="OffloadPolicy"/>).
    /// </summary>
    public void MoveTo(Device device) => ModuleTensors.MoveTo(this, device);

    /// <summary>The transformer blocks (sequential offload moves them one at a time).</summary>
    public IReadOnlyList<object> OffloadBlocks => transformer_blocks;
    /// <summary>Around each block's forward (sequential offload, set by OffloadPolicy.Stage); null otherwise.</summary>
    public BlockScope? OnBlock { get; set; }
    public bool UseAdditionalConditions { get; }
    public long InnerDim { get; }
    public long PatchSize { get; }
    public long InChannels { get; }
    public long OutChannels { get; }

    /// <summary>Builds the model from a validated config and the weights at the checkpoint's root.</summary>
    public PixArtTransformer2DModel(PixArtTransformerConfig config, Weights w)
    {
        config.Validate();
        Config = config;
        DType = w.DType;
        Device = w.Device;
        UseAdditionalConditions = config.UseAdditionalConditionsResolved;
        InnerDim = config.InnerDim;
        PatchSize = config.PatchSize!.Value;
        InChannels = config.InChannels!.Value;
        OutChannels = config.OutChannelsResolved;
        var built = new List<IDisposable>();
        try
        {
            pos_embed = Track(new PatchEmbed(w.Sub("pos_embed"), InChannels, InnerDim, PatchSize,
                config.BaseSize, config.InterpolationScaleResolved), built);
            transformer_blocks = new PixArtTransformerBlock[config.NumLayers];
            for (int i = 0; i < config.NumLayers; i++)
                transformer_blocks[i] = Track(new PixArtTransformerBlock(w.Sub($"transformer_blocks.{i}"), config), built);
            norm_out = new LayerNorm(null, InnerDim, 1e-6, elementwiseAffine: false);
            scale_shift_table = w.Get("scale_shift_table", 2, InnerDim);
            built.Add(scale_shift_table);
            proj_out = Track(new Linear(w.Sub("proj_out"), InnerDim, PatchSize * PatchSize * OutChannels), built);
            adaln_single = Track(new AdaLayerNormSingle(w.Sub("adaln_single"), InnerDim, UseAdditionalConditions), built);
            caption_projection = Track(new PixArtAlphaTextProjection(w.Sub("caption_projection"), config.CaptionChannels!.Value, InnerDim), built);
            w.CheckAllUsed();
        }
        catch
        {
            foreach (var d in built) d.Dispose();
            throw;
        }
    }

    private static T Track<T>(T module, List<IDisposable> built) where T : IDisposable
    {
        built.Add(module);
        return module;
    }

    /// <summary>
    /// Loads <c>transformerDir/config.json</c> and <c>diffusion_pytorch_model[.variant].safetensors</c> (or its shards),
    /// with LoRA adapters merged into the weights when <paramref name="loras"/> names any (see <see cref="LoraMerge"/>;
    /// the adapters can be disposed once this returns).
    /// </summary>
    /// <param name="load">How weights are read (<see cref="WeightLoadOptions.Copied"/> for a long-lived process).</param>
    public static PixArtTransformer2DModel FromFolder(string transformerDir, string? variant = null, ScalarType dtype = ScalarType.Float32, Device? device = null,
                                                      IReadOnlyList<(LoraAdapter Adapter, double Scale)>? loras = null, WeightLoadOptions? load = null)
    {
        var config = PixArtTransformerConfig.Load(Path.Combine(transformerDir, "config.json"));
        using var w = ModelFolder.OpenWeights(transformerDir, WeightStem, variant, dtype, device, load);
        if (loras is not { Count: > 0 }) return new PixArtTransformer2DModel(config, w);
        using var merged = LoraMerge.Apply(w, loras);
        return new PixArtTransformer2DModel(config, merged);
    }

    /// <summary>
    /// One denoiser evaluation.
    /// </summary>
    /// <param name="hiddenStates">[B, in_channels, H, W] latents; H and W multiples of the patch size</param>
    /// <param name="encoderHiddenStates">[B, L, caption_channels] T5 embeddings</param>
    /// <param name="encoderAttentionMask">[B, L], 1 = attend, 0 = padding (any numeric or bool dtype)</param>
    /// <param name="timestep">[B] training timesteps, int64 or float</param>
    /// <param name="resolution">[B, 2] (height, width) in pixels; required iff the model uses micro-conditions</param>
    /// <param name="aspectRatio">[B, 1] height / width; required iff the model uses micro-conditions</param>
    /// <param name="trace">
    /// Optional: called with the fixture names of intermediates (<c>pos_embed.output</c>, <c>adaln_single.timestep</c>,
    /// <c>adaln_single.embedded_timestep</c>, <c>caption_projection.output</c>, <c>block.{i}.output</c>,
    /// <c>norm_out.output</c>, <c>proj_out.output</c>). The tensor belongs to this call's dispose scope: use
    /// <c>t.clone().DetachFromDisposeScope()</c> to keep it.
    /// </param>
    /// <returns>[B, out_channels, H, W] in <see cref="DType"/></returns>
    public Tensor forward(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor encoderAttentionMask, Tensor timestep,
                          Tensor? resolution = null, Tensor? aspectRatio = null, Action<string, Tensor>? trace = null)
    {
        CheckInputs(hiddenStates, encoderHiddenStates, encoderAttentionMask, timestep, resolution, aspectRatio);
        using var scope = NewDisposeScope();
        long b = hiddenStates.shape[0];
        long h = hiddenStates.shape[2] / PatchSize, w = hiddenStates.shape[3] / PatchSize;

        // 0. Cross-attention bias from the 0/1 mask: (1 − mask)·(−10000.0), [B, L] → [B, 1, 1, L] (broadcast to heads
        //    and queries). Added to the scores, not a hard mask.
        var bias = encoderAttentionMask.to(DType, Device).neg().add_(1).mul_(-10000.0).view(b, 1, 1, -1);

        // 1. Input
        var x = pos_embed.forward(hiddenStates.to(DType, Device));                       // [B, N, D]
        trace?.Invoke("pos_embed.output", x);
        var (t6, embeddedTimestep) = adaln_single.forward(timestep.to(Device),
            resolution?.to(ScalarType.Float32, Device), aspectRatio?.to(ScalarType.Float32, Device), b, DType);
        trace?.Invoke("adaln_single.timestep", t6);                                     // [B, 6D]
        trace?.Invoke("adaln_single.embedded_timestep", embeddedTimestep);               // [B, D]
        var caption = caption_projection.forward(encoderHiddenStates.to(DType, Device)); // [B, L, D]
        trace?.Invoke("caption_projection.output", caption);

        // 2. Blocks
        for (int i = 0; i < transformer_blocks.Length; i++)
        {
            Tensor next;
            using (OnBlock?.Invoke(transformer_blocks[i])) next = transformer_blocks[i].forward(x, caption, bias, t6);   // sequential offload: block i on the device
            x.Dispose();
            x = next;
            trace?.Invoke($"block.{i}.output", x);
        }

        // 3. Output: shift, scale = (scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        var mod = scale_shift_table.unsqueeze(0).add(embeddedTimestep.unsqueeze(1)).chunk(2, 1);   // 2 × [B, 1, D]
        x = norm_out.forward(x);
        trace?.Invoke("norm_out.output", x);
        x = x.mul_(mod[1].add(1)).add_(mod[0]);
        x = proj_out.forward(x);                                                         // [B, N, p·p·C]
        trace?.Invoke("proj_out.output", x);

        // 4. Unpatchify: (B, h, w, p, q, C) → einsum nhwpqc→nchpwq → (B, C, h·p, w·q)
        long p = PatchSize, c = OutChannels;
        var output = x.view(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, w * p);
        return output.MoveToOuterDisposeScope();
    }

    private void CheckInputs(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor encoderAttentionMask, Tensor timestep,
                             Tensor? resolution, Tensor? aspectRatio)
    {
        static string S(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
        if (hiddenStates.dim() != 4 || hiddenStates.shape[1] != InChannels)
            throw new ArgumentException($"hiddenStates must be [B, {InChannels}, H, W]; got {S(hiddenStates)}.", nameof(hiddenStates));
        long b = hiddenStates.shape[0];
        if (b == 0) throw new ArgumentException("hiddenStates has an empty batch.", nameof(hiddenStates));
        if (hiddenStates.shape[2] == 0 || hiddenStates.shape[3] == 0 || hiddenStates.shape[2] % PatchSize != 0 || hiddenStates.shape[3] % PatchSize != 0)
            throw new ArgumentException($"hiddenStates height and width must be positive multiples of the patch size {PatchSize}; got {hiddenStates.shape[2]}×{hiddenStates.shape[3]}.", nameof(hiddenStates));
        if (encoderHiddenStates.dim() != 3 || encoderHiddenStates.shape[0] != b || encoderHiddenStates.shape[2] != Config.CaptionChannels || encoderHiddenStates.shape[1] == 0)
            throw new ArgumentException($"encoderHiddenStates must be [B={b}, L, {Config.CaptionChannels}] with L > 0; got {S(encoderHiddenStates)}.", nameof(encoderHiddenStates));
        long l = encoderHiddenStates.shape[1];
        if (encoderAttentionMask.dim() != 2 || encoderAttentionMask.shape[0] != b || encoderAttentionMask.shape[1] != l)
            throw new ArgumentException($"encoderAttentionMask must be [B={b}, L={l}] (1 = keep, 0 = padding); got {S(encoderAttentionMask)}.", nameof(encoderAttentionMask));
        if (timestep.dim() != 1 || timestep.shape[0] != b)
            throw new ArgumentException($"timestep must be [B={b}] (one timestep per sample); got {S(timestep)}.", nameof(timestep));
        if (UseAdditionalConditions)
        {
            if (resolution is null)
                throw new ArgumentException("This model uses micro-conditioning (sample_size 128): resolution [B, 2] (height, width in pixels) is required.", nameof(resolution));
            if (aspectRatio is null)
                throw new ArgumentException("This model uses micro-conditioning (sample_size 128): aspectRatio [B, 1] (height / width) is required.", nameof(aspectRatio));
            if (resolution.dim() != 2 || resolution.shape[0] != b || resolution.shape[1] != 2)
                throw new ArgumentException($"resolution must be [B={b}, 2] (height, width); got {S(resolution)}.", nameof(resolution));
            if (aspectRatio.numel() != b || aspectRatio.shape[0] != b)
                throw new ArgumentException($"aspectRatio must be [B={b}, 1]; got {S(aspectRatio)}.", nameof(aspectRatio));
        }
    }

    public void Dispose()
    {
        pos_embed.Dispose();
        foreach (var blk in transformer_blocks) blk.Dispose();
        norm_out.Dispose();
        scale_shift_table.Dispose();
        proj_out.Dispose();
        adaln_single.Dispose();
        caption_projection.Dispose();
    }
}
