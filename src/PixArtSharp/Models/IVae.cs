using PixArtSharp.Schedulers;
using static TorchSharp.torch;

namespace PixArtSharp.Models;

/// <summary>
/// What the pipeline needs of its <c>vae</c> component: diffusers' <c>vae.decode(z).sample</c>, the image-to-image
/// encode as <c>retrieve_latents(vae.encode(image), generator)</c> does it, and the two config values the pipeline
/// reads (<c>scaling_factor</c>, and the pixels per latent). <see cref="AutoencoderKL"/> (the SD / SDXL VAE) is one.
/// </summary>
internal interface IVae : IDisposable
{
    /// <summary><c>vae.config.scaling_factor</c>: the pipeline decodes <c>latents / ScalingFactor</c>.</summary>
    double ScalingFactor { get; }
    /// <summary>Pixels per latent along each side: 2^(len(block_out_channels) − 1), 8 for every PixArt VAE.</summary>
    int VaeScaleFactor { get; }
    /// <summary>Latent channels (4).</summary>
    int LatentChannels { get; }
    /// <summary><c>vae.decode(latents).sample</c>: (B, C, h, w) → fp32 (B, 3, h·f, w·f) in about [−1, 1].</summary>
    Tensor Decode(Tensor latents);
    /// <summary>
    /// <c>retrieve_latents(vae.encode(image), generator)</c>, before the scaling factor: a sample of the latent
    /// distribution (one draw of its shape from <paramref name="noise"/>), or the latents themselves for a VAE that
    /// has no distribution. (B, 3, H, W) in [−1, 1] → fp32 (B, C, H/f, W/f).
    /// </summary>
    Tensor EncodeLatents(Tensor image, NoiseSource noise);
}
