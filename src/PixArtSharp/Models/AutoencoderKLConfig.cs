using PixArtSharp.Loading;

namespace PixArtSharp.Models;

/// <summary>
/// <c>vae/config.json</c> of diffusers' <c>AutoencoderKL</c> (v0.29.2). Defaults are diffusers' own, so the real
/// PixArt VAE configs (which omit <c>use_quant_conv</c>, <c>shift_factor</c>, … ) load as they are.
/// </summary>
internal sealed class AutoencoderKLConfig
{
    [System.Text.Json.Serialization.JsonPropertyName("_class_name")] public string? ClassName { get; set; }
    public int InChannels { get; set; } = 3;
    public int OutChannels { get; set; } = 3;
    public string[] DownBlockTypes { get; set; } = ["DownEncoderBlock2D"];
    public string[] UpBlockTypes { get; set; } = ["UpDecoderBlock2D"];
    public int[] BlockOutChannels { get; set; } = [64];
    public int LayersPerBlock { get; set; } = 1;
    public string ActFn { get; set; } = "silu";
    public int LatentChannels { get; set; } = 4;
    public int NormNumGroups { get; set; } = 32;
    public int SampleSize { get; set; } = 32;
    public double ScalingFactor { get; set; } = 0.18215;
    public double? ShiftFactor { get; set; }
    public double[]? LatentsMean { get; set; }
    public double[]? LatentsStd { get; set; }
    /// <summary>diffusers upcasts the VAE to fp32 for fp16 pipelines when set; irrelevant to fp32/bf16.</summary>
    public bool ForceUpcast { get; set; } = true;
    public bool UseQuantConv { get; set; } = true;
    public bool UsePostQuantConv { get; set; } = true;
    public bool MidBlockAddAttention { get; set; } = true;

    /// <summary>2^(levels−1): 8 for the SD VAE (each DownEncoderBlock2D but the last halves the size).</summary>
    public int VaeScaleFactor => 1 << (BlockOutChannels.Length - 1);

    public static AutoencoderKLConfig Load(string path)
    {
        var c = ConfigJson.Load<AutoencoderKLConfig>(path);
        c.Validate(path);
        return c;
    }

    /// <summary>Rejects configs this port cannot build, naming the key, instead of failing later on a weight shape.</summary>
    public void Validate(string source = "AutoencoderKL config")
    {
        void Limit(string key, long value, long min, long max)
        {
            if (value < min || value > max)
                throw new ModelConfigException(source, key, $"{source}: {key} is {value}; it must be {min}..{max}.");
        }
        if (ClassName is not (null or "AutoencoderKL"))
            throw new ModelConfigException(source, "_class_name", $"{source}: _class_name is '{ClassName}'; this VAE loader reads AutoencoderKL only.");
        if (BlockOutChannels is { Length: > 8 })
            throw new ModelConfigException(source, "block_out_channels", $"{source}: block_out_channels has {BlockOutChannels.Length} levels; at most 8 are accepted (the SD VAE has 4).");
        foreach (var ch in BlockOutChannels ?? [])
            Limit("block_out_channels", ch, 1, 8192);
        Limit("layers_per_block", LayersPerBlock, 1, 64);
        Limit("latent_channels", LatentChannels, 1, 4096);
        Limit("in_channels", InChannels, 1, 4096);
        Limit("out_channels", OutChannels, 1, 4096);
        Limit("norm_num_groups", NormNumGroups, 1, 8192);
        if (ShiftFactor is { } sf && !double.IsFinite(sf))
            throw new ModelConfigException(source, "shift_factor", $"{source}: shift_factor must be a finite number, not {sf}.");
        foreach (var (key, values) in new[] { ("latents_mean", LatentsMean), ("latents_std", LatentsStd) })
            if (values is not null && values.Any(v => !double.IsFinite(v)))
                throw new ModelConfigException(source, key, $"{source}: {key} holds a value that is not a finite number.");
        if (BlockOutChannels is null || BlockOutChannels.Length == 0)
            throw new ModelConfigException(source, "block_out_channels", $"{source}: block_out_channels must list at least one channel count.");
        if (DownBlockTypes is null || DownBlockTypes.Length != BlockOutChannels.Length)
            throw new ModelConfigException(source, "down_block_types", $"{source}: down_block_types has {DownBlockTypes?.Length ?? 0} entries but block_out_channels has {BlockOutChannels.Length}; they must match.");
        if (UpBlockTypes is null || UpBlockTypes.Length != BlockOutChannels.Length)
            throw new ModelConfigException(source, "up_block_types", $"{source}: up_block_types has {UpBlockTypes?.Length ?? 0} entries but block_out_channels has {BlockOutChannels.Length}; they must match.");
        foreach (var t in DownBlockTypes)
            if (t != "DownEncoderBlock2D")
                throw new ModelConfigException(source, "down_block_types", $"{source}: down_block_types contains '{t}'; only 'DownEncoderBlock2D' (the Stable Diffusion VAE) is supported.");
        foreach (var t in UpBlockTypes)
            if (t != "UpDecoderBlock2D")
                throw new ModelConfigException(source, "up_block_types", $"{source}: up_block_types contains '{t}'; only 'UpDecoderBlock2D' (the Stable Diffusion VAE) is supported.");
        if (NormNumGroups <= 0)
            throw new ModelConfigException(source, "norm_num_groups", $"{source}: norm_num_groups must be positive, not {NormNumGroups}.");
        foreach (var ch in BlockOutChannels)
            if (ch <= 0 || ch % NormNumGroups != 0)
                throw new ModelConfigException(source, "block_out_channels", $"{source}: block_out_channels entry {ch} is not a positive multiple of norm_num_groups {NormNumGroups}.");
        if (LayersPerBlock < 1)
            throw new ModelConfigException(source, "layers_per_block", $"{source}: layers_per_block must be at least 1, not {LayersPerBlock}.");
        if (InChannels < 1 || OutChannels < 1 || LatentChannels < 1)
            throw new ModelConfigException(source, "in_channels", $"{source}: in_channels, out_channels and latent_channels must be positive.");
        if (VaeActivation.Parse(ActFn) is null)
            throw new ModelConfigException(source, "act_fn", $"{source}: act_fn '{ActFn}' is not supported (use silu, swish, mish, gelu or relu).");
        if (!(ScalingFactor > 0) || double.IsInfinity(ScalingFactor))
            throw new ModelConfigException(source, "scaling_factor", $"{source}: scaling_factor must be a positive number, not {ScalingFactor}.");
    }
}
