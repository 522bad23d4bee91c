using System.Globalization;
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
internal sealed class PixArtTransformerConfig
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
        void Bad(string msg) => throw new ModelConfigException(source, KeyOf(msg), $"{source}: {msg}");
        void Unsupported(string msg) => throw new ModelConfigException(source, KeyOf(msg), $"{source}: {msg} PixArtSharp implements the PixArt-α transformer only.");
        void Limit(string key, long value, long min, long max)
        {
            if (value < min || value > max)
                throw new ModelConfigException(source, key, $"{source}: {key} is {value}; it must be {min}..{max}.");
        }

        if (ClassName is not (null or "PixArtTransformer2DModel" or "Transformer2DModel"))
            Unsupported($"_class_name is '{ClassName}', not PixArtTransformer2DModel or Transformer2DModel.");
        if (SampleSize is not > 0) Bad("sample_size must be given (a positive integer); a patched transformer needs it.");
        if (PatchSize is not > 0) Bad("patch_size must be given (a positive integer).");
        if (InChannels is not > 0) Bad("in_channels must be given (a positive integer).");
        if (OutChannelsResolved <= 0) Bad("out_channels must be positive.");
        if (NumAttentionHeads <= 0 || AttentionHeadDim <= 0) Bad("num_attention_heads and attention_head_dim must be positive.");
        if (NumLayers < 0) Bad("num_layers must not be negative.");
        // Sizes are bounded before anything is allocated from them (the real models: sample_size 64–256,
        // patch_size 2, 16 heads of 72, 28 layers): an absurd value is a broken file, not a model to try.
        Limit("sample_size", SampleSize!.Value, 1, MaxSampleSize);
        Limit("patch_size", PatchSize!.Value, 1, Math.Min(64, SampleSize.Value));
        Limit("num_attention_heads", NumAttentionHeads, 1, 1024);
        Limit("attention_head_dim", AttentionHeadDim, 1, 4096);
        Limit("num_attention_heads·attention_head_dim", (long)NumAttentionHeads * AttentionHeadDim, 1, 65536);
        Limit("num_layers", NumLayers, 0, 1024);
        Limit("in_channels", InChannels!.Value, 1, 4096);
        Limit("out_channels", OutChannelsResolved, 1, 4096);
        if (CaptionChannels is { } cc) Limit("caption_channels", cc, 1, 65536);
        if (NumEmbedsAdaNorm is { } ne) Limit("num_embeds_ada_norm", ne, 1, 1 << 20);
        if (InterpolationScale is { } isc && !double.IsFinite(isc)) Bad("interpolation_scale must be a finite positive number.");
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
            Unsupported($"cross_attention_dim {CrossAttentionDim?.ToString(CultureInfo.InvariantCulture) ?? "null"} must equal num_attention_heads·attention_head_dim = {InnerDim} (the caption projection's width).");
        if (InnerDim % 4 != 0) Bad($"the inner dim {InnerDim} must be divisible by 4 for the 2D sin-cos position embedding.");
        if (UseAdditionalConditionsResolved && InnerDim % 3 != 0)
            Bad($"with micro-conditioning (use_additional_conditions) the inner dim {InnerDim} must be divisible by 3.");
        if (!(InterpolationScaleResolved > 0)) Bad("interpolation_scale must be positive.");
        if (!(NormEps > 0) || !double.IsFinite(NormEps)) Bad("norm_eps must be a finite positive number.");
    }

    /// <summary>The largest latent sample_size accepted: 1024 latents = 8192 pixels, twice PixArt-Σ 4K's.</summary>
    public const int MaxSampleSize = 1024;

    // The config key a message is about: its first snake_case word ("sample_size must …" → sample_size).
    private static string? KeyOf(string msg)
    {
        var m = System.Text.RegularExpressions.Regex.Match(msg, @"(?<![A-Za-z])(_?[a-z]+(?:_[a-z]+)+)");
        return m.Success ? m.Groups[1].Value : null;
    }
}
