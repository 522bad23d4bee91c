using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Models;

/// <summary>
/// diffusers' <c>AutoencoderKL</c> (v0.29.2) as PixArt uses it (the SD VAE, sd-vae-ft-ema): an encoder to a
/// diagonal Gaussian over latents and a decoder back to pixels, each with a 1×1 (post_)quant_conv. Fields are
/// named as the checkpoint keys (<c>encoder.*</c>, <c>decoder.*</c>, <c>quant_conv</c>, <c>post_quant_conv</c>).
/// Weights may be held in bf16; every public result is returned in fp32.
/// </summary>
internal sealed class AutoencoderKL : IVae, IMovableModel
{
    public const string WeightStem = "diffusion_pytorch_model";

    public readonly VaeEncoder encoder;
    public readonly VaeDecoder decoder;
    public readonly VaeConv2d? quant_conv;
    public readonly VaeConv2d? post_quant_conv;

    public AutoencoderKLConfig Config { get; }
    /// <summary>The dtype the weights are held and computed in.</summary>
    public ScalarType DType { get; }
    public Device Device { get; }

    /// <summary>
    /// Moves every weight to <paramref name="device"/>, disposing the old tensors (nn.Module.to(device)): the step
    /// model CPU offload takes before and after this component's stage (<see cref="OffloadPolicy"/>).
    /// </summary>
    public void MoveTo(Device device) => ModuleTensors.MoveTo(this, device);
    /// <summary>Pixels per latent along each side (8 for the SD VAE).</summary>
    public int VaeScaleFactor => Config.VaeScaleFactor;
    /// <inheritdoc/>
    public double ScalingFactor => Config.ScalingFactor;
    /// <inheritdoc/>
    public int LatentChannels => Config.LatentChannels;

    /// <summary>
    /// Builds the VAE from weights at the root of <paramref name="w"/> (keys <c>encoder.…</c>, <c>decoder.…</c>).
    /// Does not call <see cref="Weights.CheckAllUsed"/>, so one Weights may hold more than this model;
    /// <see cref="FromFolder"/> does.
    /// </summary>
    public AutoencoderKL(AutoencoderKLConfig config, Weights w)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(w);
        config.Validate();
        Config = config;
        DType = w.DType;
        Device = w.Device;
        long lat = config.LatentChannels;
        // A part that fails to load (a missing or mis-shaped weight) frees the parts already built.
        try
        {
            encoder = new VaeEncoder(w.Sub("encoder"), config);
            decoder = new VaeDecoder(w.Sub("decoder"), config);
            if (config.UseQuantConv) quant_conv = new VaeConv2d(w.Sub("quant_conv"), 2 * lat, 2 * lat, 1);
            if (config.UsePostQuantConv) post_quant_conv = new VaeConv2d(w.Sub("post_quant_conv"), lat, lat, 1);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Loads <c>config.json</c> and <c>diffusion_pytorch_model[.variant].safetensors</c> from a diffusers <c>vae</c> folder.</summary>
    /// <param name="load">How weights are read (<see cref="WeightLoadOptions.Copied"/> for a long-lived process).</param>
    public static AutoencoderKL FromFolder(string vaeDir, string? variant, ScalarType dtype, Device? device = null, WeightLoadOptions? load = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(vaeDir);
        var config = AutoencoderKLConfig.Load(Path.Combine(vaeDir, "config.json"));
        using var w = ModelFolder.OpenWeights(vaeDir, WeightStem, variant, dtype, device, load);
        var vae = new AutoencoderKL(config, w);
        try
        {
            w.CheckAllUsed();
        }
        catch
        {
            vae.Dispose();
            throw;
        }
        return vae;
    }

    Tensor IVae.Decode(Tensor latents) => Decode(latents);

    /// <summary>
    /// <c>vae.decode(latents).sample</c>: post_quant_conv, then the decoder. Does not divide by
    /// <c>scaling_factor</c> (the pipeline passes <c>latents / 0.18215</c>). (B,latent,h,w) → fp32 (B,out,8h,8w).
    /// </summary>
    /// <param name="trace">Optional; sees <c>post_quant_conv.output</c> and the decoder's
    /// <c>decoder.{conv_in,mid_block,up_blocks.i}.output</c>. The tensors belong to this call's dispose scope and are
    /// freed when it returns: keep one with <c>t.clone().DetachFromDisposeScope()</c>.</param>
    public Tensor Decode(Tensor latents, Action<string, Tensor>? trace = null)
    {
        CheckInput(latents, Config.LatentChannels, nameof(latents), "latent");
        using var scope = NewDisposeScope();
        // One image at a time (diffusers' enable_slicing): the decoder's peak memory is per image, and each image
        // comes out bit-identical to decoding it alone — libtorch's CPU conv and group-norm kernels pick their
        // algorithm by batch size (measured 1e-5 apart), which would make a server's batched requests differ
        // from the same requests run alone. The decoder is convolution-bound, so this costs nothing measurable.
        if (latents.shape[0] > 1 && trace is null)
        {
            var images = new Tensor[latents.shape[0]];
            for (int i = 0; i < images.Length; i++) images[i] = Decode(latents[i..(i + 1)]);
            return cat(images, 0).MoveToOuterDisposeScope();
        }
        // 1. post_quant_conv: (B,latent,h,w) → (B,latent,h,w)
        var z = latents.to(DType, Device);
        if (post_quant_conv is not null) z = post_quant_conv.forward(z);
        trace?.Invoke("post_quant_conv.output", z);
        // 2. decoder: → (B,out,h·f,w·f), returned in fp32 whatever the weights' dtype
        var dec = decoder.forward(z, trace);
        return dec.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The encoder's Gaussian parameters for an image in [−1, 1]: (B,in,H,W) → fp32 mean and logvar (B,latent,H/8,W/8),
    /// logvar clamped to [−30, 20] as DiagonalGaussianDistribution does.
    /// </summary>
    public (Tensor mean, Tensor logvar) EncodeMoments(Tensor image)
    {
        CheckInput(image, Config.InChannels, nameof(image), "image");
        using var scope = NewDisposeScope();
        // 1. encoder → quant_conv: (B,2·latent,H/f,W/f)
        var h = encoder.forward(image.to(DType, Device));
        var moments = quant_conv is null ? h : quant_conv.forward(h);
        // 2. mean, logvar = chunk(moments, 2, dim=1); logvar = clamp(logvar, −30, 20)
        var parts = moments.to(ScalarType.Float32).chunk(2, 1);
        var mean = parts[0].contiguous();
        var logvar = parts[1].clamp(-30.0, 20.0);
        return (mean.MoveToOuterDisposeScope(), logvar.MoveToOuterDisposeScope());
    }

    /// <summary><c>vae.encode(image).latent_dist</c>.</summary>
    public LatentDist Encode(Tensor image)
    {
        var (mean, logvar) = EncodeMoments(image);
        return new LatentDist(mean, logvar);
    }

    /// <summary><c>latent_dist.sample(generator)</c> = mean + std · randn(mean.shape): one draw from <paramref name="noise"/>.</summary>
    public Tensor EncodeLatents(Tensor image, Schedulers.NoiseSource noise)
    {
        using var scope = NewDisposeScope();
        using var dist = Encode(image);
        var sample = noise.Randn(dist.mean.shape, ScalarType.Float32, dist.mean.device);
        return (dist.mean + dist.std * sample).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decodes in overlapping tiles and blends the seams, as diffusers' <c>tiled_decode</c> does with
    /// <c>tile_latent_min_size = tileLatentSize</c>, <c>tile_sample_min_size = tileLatentSize·8</c> and
    /// <c>tile_overlap_factor = overlap</c>: tiles start every ⌊tileLatentSize·(1−overlap)⌋ latents, each tile
    /// is blended linearly with the one above and the one to its left over ⌊tile_sample·overlap⌋ pixels, and
    /// the top-left (tile_sample − blend) pixels of each are kept. Peak memory is that of one tile's decode,
    /// at the price of small differences from <see cref="Decode"/> (the attention and group norms see one tile).
    /// Like diffusers' <c>decode</c> with tiling enabled, a latent no larger than one tile is decoded whole.
    /// </summary>
    public Tensor DecodeTiled(Tensor latents, int tileLatentSize, double overlap = 0.25)
    {
        CheckInput(latents, Config.LatentChannels, nameof(latents), "latent");
        if (tileLatentSize < 1)
            throw new ArgumentException($"tileLatentSize must be at least 1 latent, not {tileLatentSize}.", nameof(tileLatentSize));
        if (!(overlap >= 0 && overlap < 1))
            throw new ArgumentException($"overlap is the fraction of a tile shared with its neighbour and must be in [0, 1), not {overlap}.", nameof(overlap));
        int tileSample = tileLatentSize * VaeScaleFactor;
        int overlapSize = (int)(tileLatentSize * (1 - overlap));     // Python int(): truncation
        int blendExtent = (int)(tileSample * overlap);
        int rowLimit = tileSample - blendExtent;
        if (overlapSize < 1)
            throw new ArgumentException($"tileLatentSize {tileLatentSize} with overlap {overlap} leaves a stride of 0 latents; use a larger tile or a smaller overlap.", nameof(overlap));

        long height = latents.shape[2], width = latents.shape[3];
        if (height <= tileLatentSize && width <= tileLatentSize)
            return Decode(latents);

        using var scope = NewDisposeScope();
        // 1. Decode every tile (edge tiles are smaller), in fp32.
        var rows = new List<List<Tensor>>();
        for (long i = 0; i < height; i += overlapSize)
        {
            var row = new List<Tensor>();
            for (long j = 0; j < width; j += overlapSize)
            {
                using var tile = latents.narrow(2, i, Math.Min(tileLatentSize, height - i))
                                        .narrow(3, j, Math.Min(tileLatentSize, width - j));
                row.Add(Decode(tile));
            }
            rows.Add(row);
        }
        // 2. Blend each tile, in place, with the (already blended) tile above and to its left, crop, concatenate.
        //    In place matters: diffusers' blend_v/blend_h write into the tile, and later tiles blend with the result.
        var resultRows = new List<Tensor>();
        for (int i = 0; i < rows.Count; i++)
        {
            var resultRow = new List<Tensor>();
            for (int j = 0; j < rows[i].Count; j++)
            {
                var tile = rows[i][j];
                if (i > 0) BlendInPlace(rows[i - 1][j], tile, blendExtent, dim: 2);
                if (j > 0) BlendInPlace(rows[i][j - 1], tile, blendExtent, dim: 3);
                resultRow.Add(tile.narrow(2, 0, Math.Min(rowLimit, tile.shape[2])).narrow(3, 0, Math.Min(rowLimit, tile.shape[3])));
            }
            resultRows.Add(torch.cat(resultRow, 3));
        }
        return torch.cat(resultRows, 2).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// diffusers' blend_v (dim 2) / blend_h (dim 3): the first e rows (columns) of b become
    /// a[−e+y]·(1 − y/e) + b[y]·(y/e), with e = min(a's size, b's size, extent).
    /// </summary>
    private static void BlendInPlace(Tensor a, Tensor b, int extent, int dim)
    {
        long e = Math.Min(Math.Min(a.shape[dim], b.shape[dim]), extent);
        if (e <= 0) return;
        using var scope = NewDisposeScope();
        // The weights are Python floats (y / e, 1 − y / e) computed in double, then used in b's dtype.
        var shape = dim == 2 ? new long[] { e, 1 } : new long[] { e };
        var wB = torch.arange(e, ScalarType.Float64, b.device).div_(e);
        var wA = torch.ones(e, ScalarType.Float64, b.device).sub_(wB);
        var blended = a.narrow(dim, a.shape[dim] - e, e) * wA.reshape(shape).to(b.dtype)
                      + b.narrow(dim, 0, e) * wB.reshape(shape).to(b.dtype);
        b.narrow(dim, 0, e).copy_(blended);
    }

    private static void CheckInput(Tensor x, int channels, string argName, string what)
    {
        ArgumentNullException.ThrowIfNull(x, argName);
        if (x.dim() != 4 || x.shape[1] != channels)
            throw new ArgumentException($"{argName} must be a {what} batch of shape (B, {channels}, H, W), not [{string.Join(", ", x.shape)}].", argName);
        if (!x.is_floating_point())
            throw new ArgumentException($"{argName} must be a floating-point tensor, not {x.dtype}.", argName);
        if (x.shape[0] < 1 || x.shape[2] < 1 || x.shape[3] < 1)
            throw new ArgumentException($"{argName} is empty: shape [{string.Join(", ", x.shape)}].", argName);
    }

    public void Dispose()
    {
        // (Null-checked: a constructor that failed part-way disposes what it built.)
        encoder?.Dispose();
        decoder?.Dispose();
        quant_conv?.Dispose();
        post_quant_conv?.Dispose();
    }
}

/// <summary>
/// diffusers' <c>DiagonalGaussianDistribution</c> over latents, in fp32: mean, logvar (already clamped to
/// [−30, 20]), std = exp(0.5·logvar), var = exp(logvar). Owns its tensors.
/// </summary>
internal sealed class LatentDist : IDisposable
{
    public readonly Tensor mean;
    public readonly Tensor logvar;
    public readonly Tensor std;
    public readonly Tensor var;

    public LatentDist(Tensor mean, Tensor logvar)
    {
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(logvar);
        if (!mean.shape.SequenceEqual(logvar.shape))
            throw new ArgumentException($"mean [{string.Join(", ", mean.shape)}] and logvar [{string.Join(", ", logvar.shape)}] must have the same shape.", nameof(logvar));
        this.mean = mean;
        this.logvar = logvar;
        std = (logvar * 0.5).exp_();
        var = logvar.exp();
    }

    /// <summary>
    /// mean + std·randn(mean.shape, generator) — one draw of mean.numel() normals from <paramref name="generator"/>,
    /// taken in fp32 on the generator's device (bit-identical to PyTorch's CPU generator), then moved to mean's device.
    /// </summary>
    public Tensor Sample(Generator generator)
    {
        ArgumentNullException.ThrowIfNull(generator);
        using var scope = NewDisposeScope();
        var noise = torch.randn(mean.shape, ScalarType.Float32, generator.device, generator: generator)
                         .to(mean.dtype, mean.device);
        return (mean + std * noise).MoveToOuterDisposeScope();
    }

    /// <summary>The mode of the distribution: the mean (a copy).</summary>
    public Tensor Mode() => mean.clone();

    public void Dispose()
    {
        mean.Dispose(); logvar.Dispose(); std.Dispose(); var.Dispose();
    }
}
