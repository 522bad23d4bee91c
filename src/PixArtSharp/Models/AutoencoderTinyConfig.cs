using System.Text.Json.Serialization;
using PixArtSharp.Loading;

namespace PixArtSharp.Models;

/// <summary>
/// <c>config.json</c> of diffusers' <c>AutoencoderTiny</c> (v0.29.2), the TAESD / TAESDXL tiny autoencoders. Defaults
/// are diffusers' own, which are also the values <c>madebyollin/taesd</c> and <c>madebyollin/taesdxl</c> use.
/// </summary>
internal sealed class AutoencoderTinyConfig
{
    [JsonPropertyName("_class_name")] public string? ClassName { get; set; }
    public int InChannels { get; set; } = 3;
    public int OutChannels { get; set; } = 3;
    public int[] EncoderBlockOutChannels { get; set; } = [64, 64, 64, 64];
    public int[] DecoderBlockOutChannels { get; set; } = [64, 64, 64, 64];
    public string ActFn { get; set; } = "relu";
    public string UpsampleFn { get; set; } = "nearest";
    public int LatentChannels { get; set; } = 4;
    public int UpsamplingScalingFactor { get; set; } = 2;
    public int[] NumEncoderBlocks { get; set; } = [1, 3, 3, 3];
    public int[] NumDecoderBlocks { get; set; } = [3, 3, 3, 1];
    /// <summary><c>scale_latents</c> maps ±latent_magnitude to [0, 1] (an int in diffusers; 3 for TAESD).</summary>
    public double LatentMagnitude { get; set; } = 3;
    public double LatentShift { get; set; } = 0.5;
    /// <summary>diffusers registers it as false whatever the file says; kept for completeness.</summary>
    public bool ForceUpcast { get; set; }
    /// <summary>1.0 for TAESD: the pipeline hands the decoder <c>latents / 1.0</c>, i.e. the latents as they are.</summary>
    public double ScalingFactor { get; set; } = 1.0;
    /// <summary>diffusers registers <c>block_out_channels = decoder_block_out_channels</c>; pipelines read it for the scale factor.</summary>
    public int[]? BlockOutChannels { get; set; }

    /// <summary>
    /// Pixels per latent along each side as diffusers' pipelines compute it, 2^(len(block_out_channels) − 1)
    /// with block_out_channels = decoder_block_out_channels: 8 for TAESD. <see cref="Validate"/> requires the
    /// decoder's real upsampling (upsampling_scaling_factor^(levels − 1)) and the encoder's stride-2 levels to agree.
    /// </summary>
    public int VaeScaleFactor => 1 << ((BlockOutChannels ?? DecoderBlockOutChannels).Length - 1);

    public static AutoencoderTinyConfig Load(string path)
    {
        var c = ConfigJson.Load<AutoencoderTinyConfig>(path);
        c.Validate(path);
        return c;
    }

    /// <summary>Rejects configs this port (or diffusers) cannot build, naming the key, instead of failing later on a weight shape.</summary>
    public void Validate(string source = "AutoencoderTiny config")
    {
        void Bad(string msg) => throw new WeightFileException($"{source}: {msg}");

        if (ClassName is not (null or "AutoencoderTiny"))
            Bad(ClassName == "AutoencoderKL"
                ? "_class_name is 'AutoencoderKL': this is a full VAE (e.g. the SD VAE), not a tiny autoencoder (TAESD). Load it with AutoencoderKL, or give a TAESD folder such as madebyollin/taesd."
                : $"_class_name is '{ClassName}', not AutoencoderTiny. Give a TAESD folder such as madebyollin/taesd.");
        if (InChannels < 1 || OutChannels < 1 || LatentChannels < 1)
            Bad("in_channels, out_channels and latent_channels must be positive.");
        CheckLevels("encoder_block_out_channels", EncoderBlockOutChannels, "num_encoder_blocks", NumEncoderBlocks);
        CheckLevels("decoder_block_out_channels", DecoderBlockOutChannels, "num_decoder_blocks", NumDecoderBlocks);
        if (VaeActivation.Parse(ActFn) is null)
            Bad($"act_fn '{ActFn}' is not supported (use relu, silu, swish, mish or gelu).");
        if (UpsampleFn != "nearest")
            Bad($"upsample_fn '{UpsampleFn}' is not supported; only 'nearest' (TAESD's) is.");
        if (UpsamplingScalingFactor != 2)
            Bad($"upsampling_scaling_factor {UpsamplingScalingFactor} is not supported; only 2 is (the encoder halves each level with stride-2 convolutions, and pipelines assume a factor of 2 per level).");
        if (EncoderBlockOutChannels.Length != DecoderBlockOutChannels.Length)
            Bad($"encoder_block_out_channels has {EncoderBlockOutChannels.Length} levels but decoder_block_out_channels {DecoderBlockOutChannels.Length}; the encoder's downsampling and the decoder's upsampling would not match.");
        if (BlockOutChannels is not null && BlockOutChannels.Length != DecoderBlockOutChannels.Length)
            Bad($"block_out_channels has {BlockOutChannels.Length} entries but decoder_block_out_channels {DecoderBlockOutChannels.Length}; diffusers writes block_out_channels = decoder_block_out_channels.");
        if (!(LatentMagnitude > 0) || double.IsInfinity(LatentMagnitude))
            Bad($"latent_magnitude must be a positive number, not {LatentMagnitude}.");
        if (!double.IsFinite(LatentShift))
            Bad($"latent_shift must be a finite number, not {LatentShift}.");
        if (!(ScalingFactor > 0) || double.IsInfinity(ScalingFactor))
            Bad($"scaling_factor must be a positive number, not {ScalingFactor}.");

        void CheckLevels(string channelsKey, int[]? channels, string blocksKey, int[]? blocks)
        {
            if (channels is null || channels.Length == 0) Bad($"{channelsKey} must list at least one channel count.");
            if (blocks is null || blocks.Length != channels!.Length)
                Bad($"{blocksKey} has {blocks?.Length ?? 0} entries but {channelsKey} has {channels!.Length}; they must have the same length.");
            foreach (var n in blocks!)
                if (n < 0) Bad($"{blocksKey} entry {n} is negative.");
            // diffusers builds every level's stride-2 / upsampling conv and every AutoencoderTinyBlock as
            // channels → channels of that level, fed by the previous level: unequal entries fail there at run time.
            foreach (var ch in channels!)
                if (ch <= 0 || ch != channels[0])
                    Bad($"{channelsKey} [{string.Join(", ", channels)}] must be equal positive entries: each level's first convolution takes the previous level's channels.");
        }
    }
}
