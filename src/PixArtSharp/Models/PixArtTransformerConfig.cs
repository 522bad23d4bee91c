using System.Text.Json.Serialization;
using PixArtSharp.Loading;

namespace PixArtSharp.Models;

/// <summary>
/// <c>transformer/config.json</c> of a PixArt-α pipeline: diffusers' <c>PixArtTransformer2DModel</c> (v0.29.2)
/// arguments with their Python defaults. The real Hugging Face repos were saved as <c>Transformer2DModel</c>
/// (diffusers 0.22) and carry a few keys of that class (<c>double_self_attention</c>, <c>num_vector_embeds</c>,
/// <c>use_linear_projection</c>); they load too. Values left null are derived as diffusers derives them
/// (<see cref="UseAdditionalConditionsResolved"/>, <see cref="InterpolationScaleResolved"/>).
/// </summary>
public sealed class PixArtTransformerConfig
{
    [JsonPropertyName("_class_name")] public string? ClassName { get; set; }
    public int NumAttentionHeads { get; set; } = 16;
    public int AttentionHeadDim { get; set; } = 72;
    public int? InChannels { get; set; }
    public int? OutChannels { get; set; } = 8;
    public int NumLayers { get; set; } = 28;
    public double Dropout { get; set; }
    public int NormNumGroups { get; set; } = 32;
    public int? CrossAttentionDim { get; set; } = 1152;
    public bool AttentionBias { get; set; } = true;
    public int? SampleSize { get; set; }
    public int? PatchSize { get; set; }
    public string ActivationFn { get; set; } = "gelu-approximate";
    public int? NumEmbedsAdaNorm { get; set; } = 1000;
    public bool OnlyCrossAttention { get; set; }
    /// <summary>Ignored, as diffusers' SDPA attention processor ignores it.</summary>
    public bool UpcastAttention { get; set; }
    public string NormType { get; set; } = "ada_norm_single";
    public bool NormElementwiseAffine { get; set; }
    public double NormEps { get; set; } = 1e-6;
    public double? InterpolationScale { get; set; }
    public bool? UseAdditionalConditions { get; set; }
    public string? AttentionType { get; set; } = "default";
    public int? CaptionChannels { get; set; }
    // Transformer2DModel-only keys found in the real configs.
    public bool DoubleSelfAttention { get; set; }
    public int? NumVectorEmbeds { get; set; }

    // ---- Derived values (diffusers PixArtTransformer2DModel.__init__ / PatchEmbed) ----

    public int InnerDim => NumAttentionHeads * AttentionHeadDim;
    public int OutChannelsResolved => OutChannels ?? InChannels ?? 0;
    /// <summary>Micro-conditioning on resolution and aspect ratio: when null, on exactly for sample_size 128.</summary>
    public bool UseAdditionalConditionsResolved => UseAdditionalConditions ?? SampleSize == 128;
    /// <summary>Position-embedding interpolation scale: when null, max(sample_size // 64, 1).</summary>
    public double InterpolationScaleResolved => InterpolationScale ?? Math.Max((SampleSize ?? 0) / 64, 1);
    /// <summary>PatchEmbed's base_size: the trained latent grid, sample_size // patch_size.</summary>
    public int BaseSize => (SampleSize ?? 0) / (PatchSize ?? 1);

    public static PixArtTransformerConfig Load(string path)
    {
        var c = ConfigJson.Load<PixArtTransformerConfig>(path);
        c.Validate(path);
        return c;
    }

    /// <summary>Rejects configs diffusers rejects and configs this port does not implement, naming the key.</summary>
    public void Validate(string source = "transformer config")
    {
        void Bad(string msg) => throw new WeightFileException($"{source}: {msg}");
        void Unsupported(string msg) => throw new NotSupportedException($"{source}: {msg} PixArtSharp implements the PixArt-α transformer only.");

        if (ClassName is not (null or "PixArtTransformer2DModel" or "Transformer2DModel"))
            Unsupported($"_class_name is '{ClassName}', not PixArtTransformer2DModel or Transformer2DModel.");
        if (SampleSize is not > 0) Bad("sample_size must be given (a positive integer); a patched transformer needs it.");
        if (PatchSize is not > 0) Bad("patch_size must be given (a positive integer).");
        if (InChannels is not > 0) Bad("in_channels must be given (a positive integer).");
        if (OutChannelsResolved <= 0) Bad("out_channels must be positive.");
        if (NumAttentionHeads <= 0 || AttentionHeadDim <= 0) Bad("num_attention_heads and attention_head_dim must be positive.");
        if (NumLayers < 0) Bad("num_layers must not be negative.");
        if (NormType != "ada_norm_single")
            Unsupported($"norm_type '{NormType}' is not supported; only 'ada_norm_single' is.");
        if (NumEmbedsAdaNorm is null) Bad("num_embeds_ada_norm cannot be null with norm_type 'ada_norm_single'.");
        if (ActivationFn is not ("gelu-approximate" or "gelu"))
            Unsupported($"activation_fn '{ActivationFn}' is not supported; only 'gelu-approximate' and 'gelu' are.");
        if (AttentionType is not (null or "default"))
            Unsupported($"attention_type '{AttentionType}' is not supported; only 'default' is.");
        if (OnlyCrossAttention) Unsupported("only_cross_attention true is not supported.");
        if (DoubleSelfAttention) Unsupported("double_self_attention true is not supported.");
        if (NumVectorEmbeds is not null) Unsupported("num_vector_embeds (discrete input) is not supported.");
        if (CaptionChannels is not > 0) Unsupported("caption_channels must be given: a PixArt-α transformer projects T5 embeddings.");
        if (CrossAttentionDim != InnerDim)
            Unsupported($"cross_attention_dim {CrossAttentionDim?.ToString() ?? "null"} must equal num_attention_heads·attention_head_dim = {InnerDim} (the caption projection's width).");
        if (InnerDim % 4 != 0) Bad($"the inner dim {InnerDim} must be divisible by 4 for the 2D sin-cos position embedding.");
        if (UseAdditionalConditionsResolved && InnerDim % 3 != 0)
            Bad($"with micro-conditioning (use_additional_conditions) the inner dim {InnerDim} must be divisible by 3.");
        if (!(InterpolationScaleResolved > 0)) Bad("interpolation_scale must be positive.");
        if (!(NormEps > 0)) Bad("norm_eps must be positive.");
    }
}
