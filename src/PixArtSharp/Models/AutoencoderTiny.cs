using PixArtSharp.Loading;
using PixArtSharp.Schedulers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

/// <summary>
/// diffusers' <c>AutoencoderTiny</c> (v0.29.2, models/autoencoders/autoencoder_tiny.py): TAESD, a distilled
/// autoencoder for SD-VAE latents (<c>madebyollin/taesd</c>; <c>madebyollin/taesdxl</c> for SDXL / PixArt-Σ
/// latents). Plain 3×3 convolutions and ReLUs, no norms, no attention, no latent distribution: a 1024 px decode
/// is ≈ 0.57 TFLOP against the SD VAE's 10.5. Fields are named as the checkpoint keys (<c>encoder.layers.N…</c>,
/// <c>decoder.layers.N…</c>). Weights may be held in bf16; every public result is returned in fp32.
/// <para>Decoding is tiling- and slicing-free, as diffusers' <c>decode</c> with both disabled (its defaults).</para>
/// </summary>
internal sealed class AutoencoderTiny : IVae
{
    public const string WeightStem = "diffusion_pytorch_model";

    public readonly EncoderTiny encoder;
    public readonly DecoderTiny decoder;

    public AutoencoderTinyConfig Config { get; }
    /// <summary>The dtype the weights are held and computed in.</summary>
    public ScalarType DType { get; }
    public Device Device { get; }
    /// <summary>Pixels per latent along each side (8 for TAESD), as diffusers' pipelines compute it.</summary>
    public int VaeScaleFactor => Config.VaeScaleFactor;
    /// <summary><c>scaling_factor</c>: 1.0 for TAESD, so the pipeline decodes <c>latents / 1.0</c> (the latents as they are).</summary>
    public double ScalingFactor => Config.ScalingFactor;
    /// <summary>Latent channels (4).</summary>
    public int LatentChannels => Config.LatentChannels;

    /// <summary>
    /// Builds the model from weights at the root of <paramref name="w"/> (keys <c>encoder.layers.…</c>,
    /// <c>decoder.layers.…</c>). Does not call <see cref="Weights.CheckAllUsed"/>; <see cref="FromFolder"/> does.
    /// </summary>
    public AutoencoderTiny(AutoencoderTinyConfig config, Weights w)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(w);
        config.Validate();
        Config = config;
        DType = w.DType;
        Device = w.Device;
        encoder = new EncoderTiny(w.Sub("encoder"), config);
        try
        {
            decoder = new DecoderTiny(w.Sub("decoder"), config);
        }
        catch
        {
            encoder.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads <c>config.json</c> and <c>diffusion_pytorch_model[.variant].safetensors</c> (the layout of the Hub repos
    /// madebyollin/taesd and taesdxl), from <paramref name="dir"/> itself or, when it has no config.json, from its
    /// <c>vae/</c> sub-folder (a pipeline folder whose VAE is a TAESD). A missing variant falls back to the default
    /// weights, as diffusers does.
    /// </summary>
    public static AutoencoderTiny FromFolder(string dir, string? variant, ScalarType dtype, Device? device = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        if (!Directory.Exists(dir))
            throw new ModelNotFoundException($"TAESD folder not found: {Path.GetFullPath(dir)}. Give a folder holding config.json and diffusion_pytorch_model.safetensors (e.g. a download of madebyollin/taesd).");
        string modelDir = dir;
        if (!File.Exists(Path.Combine(dir, "config.json")) && File.Exists(Path.Combine(dir, "vae", "config.json")))
            modelDir = Path.Combine(dir, "vae");
        var config = AutoencoderTinyConfig.Load(Path.Combine(modelDir, "config.json"));
        using var w = ModelFolder.OpenWeights(modelDir, WeightStem, variant, dtype, device);
        var vae = new AutoencoderTiny(config, w);
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

    /// <summary><c>vae.decode(latents).sample</c>; see <see cref="Decode(Tensor, Action{string, Tensor}?)"/>.</summary>
    public Tensor Decode(Tensor latents) => Decode(latents, null);

    /// <summary>
    /// <c>vae.decode(latents).sample</c>: (B,latent,h,w) → fp32 (B,out,8h,8w) in [−1, 1] (DecoderTiny's [0, 1] output
    /// mapped by ·2 − 1; values may overshoot slightly, the pipeline clamps). Latents go in unscaled — TAESD's
    /// scaling_factor is 1.0.
    /// </summary>
    /// <param name="trace">Optional; sees <c>decoder.first_clamp</c> (tanh(x/3)·3). The tensor belongs to this call's
    /// dispose scope: keep it with <c>t.clone().DetachFromDisposeScope()</c>.</param>
    public Tensor Decode(Tensor latents, Action<string, Tensor>? trace)
    {
        CheckInput(latents, Config.LatentChannels, nameof(latents), "latent");
        using var scope = NewDisposeScope();
        // One image at a time, as AutoencoderKL.Decode: libtorch's CPU conv picks its algorithm by batch size, so a
        // batch would change each image's last bits; one by one, a server's batched requests equal the same requests
        // run alone. The decoder is convolution-bound at batch 1 already, so this costs nothing measurable.
        if (latents.shape[0] > 1 && trace is null)
        {
            var images = new Tensor[latents.shape[0]];
            for (int i = 0; i < images.Length; i++) images[i] = Decode(latents[i..(i + 1)]);
            return cat(images, 0).MoveToOuterDisposeScope();
        }
        var x = decoder.forward(latents.to(ScalarType.Float32, Device), DType, trace);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>vae.encode(image).latents</c>: an image in [−1, 1], (B,in,H,W) → fp32 latents (B,latent,H/8,W/8). There is no
    /// distribution to sample: image-to-image uses these latents as they are (diffusers' retrieve_latents takes
    /// <c>.latents</c> and draws no noise for them).
    /// </summary>
    public Tensor Encode(Tensor image)
    {
        CheckInput(image, Config.InChannels, nameof(image), "image");
        using var scope = NewDisposeScope();
        var x = encoder.forward(image.to(ScalarType.Float32, Device), DType);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Image-to-image's <c>retrieve_latents(vae.encode(image), generator)</c> for TAESD: its output has no
    /// <c>latent_dist</c>, so diffusers returns <c>encode(image).latents</c> as they are and draws nothing from the
    /// generator; <paramref name="noise"/> is left untouched (the add_noise draw that follows is its first).
    /// </summary>
    public Tensor EncodeLatents(Tensor image, NoiseSource? noise) => Encode(image);

    /// <summary>diffusers' <c>scale_latents</c>: raw latents → [0, 1], x / (2·latent_magnitude) + latent_shift, clamped.</summary>
    public Tensor ScaleLatents(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = NewDisposeScope();
        return x.div(2 * Config.LatentMagnitude).add_(Config.LatentShift).clamp_(0, 1).MoveToOuterDisposeScope();
    }

    /// <summary>diffusers' <c>unscale_latents</c>: [0, 1] → raw latents, (x − latent_shift)·2·latent_magnitude.</summary>
    public Tensor UnscaleLatents(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = NewDisposeScope();
        return x.sub(Config.LatentShift).mul_(2 * Config.LatentMagnitude).MoveToOuterDisposeScope();
    }

    /// <summary>Every weight by checkpoint key (as diffusers' state_dict names it), for counting and checks.</summary>
    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters() =>
        encoder.NamedParameters().Select(p => ("encoder." + p.Key, p.Tensor))
               .Concat(decoder.NamedParameters().Select(p => ("decoder." + p.Key, p.Tensor)));

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
        encoder.Dispose();
        decoder?.Dispose();
    }
}

/// <summary>
/// One entry of a TAESD <c>nn.Sequential</c> (<c>layers.N</c>): a conv, an <see cref="AutoencoderTinyBlock"/>, an
/// activation or an upsampling. Its forward may modify its input in place (activations) or free nothing; the
/// sequential's forward owns every intermediate.
/// </summary>
internal interface ITinyLayer : IDisposable
{
    Tensor forward(Tensor x);
    IEnumerable<(string Key, Tensor Tensor)> NamedParameters();
}

/// <summary>A weightless layer of the sequential: the activation (applied in place) or <c>nn.Upsample</c>.</summary>
internal sealed class TinyFunction(string name, Func<Tensor, Tensor> fn) : ITinyLayer
{
    public string Name { get; } = name;
    public Tensor forward(Tensor x) => fn(x);
    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters() => [];
    public void Dispose() { }
}

/// <summary>An <c>nn.Conv2d</c> entry of the sequential (keys <c>weight</c>, and <c>bias</c> unless built with bias=False).</summary>
internal sealed class TinyConv(VaeConv2d conv) : ITinyLayer
{
    public readonly VaeConv2d conv = conv;
    public Tensor forward(Tensor x) => conv.forward(x);
    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters() =>
        conv.bias is null ? [("weight", conv.weight)] : [("weight", conv.weight), ("bias", conv.bias)];
    public void Dispose() => conv.Dispose();
}

/// <summary>
/// diffusers' <c>AutoencoderTinyBlock</c> (unets/unet_2d_blocks.py): relu(conv(x) + skip(x)), conv = conv.0 → act →
/// conv.2 → act → conv.4 (3×3, padding 1), skip a bias-free 1×1 conv when the channels change (identity in TAESD),
/// fuse an <c>nn.ReLU</c> whatever act_fn is.
/// </summary>
internal sealed class AutoencoderTinyBlock : ITinyLayer
{
    /// <summary>The convolutions of <c>conv</c> (an nn.Sequential): indices 0, 2 and 4; 1 and 3 are the activation.</summary>
    public readonly VaeConv2d conv_0, conv_2, conv_4;
    public readonly VaeConv2d? skip;
    private readonly Func<Tensor, Tensor> _act;

    public AutoencoderTinyBlock(Weights w, long inChannels, long outChannels, Func<Tensor, Tensor> act)
    {
        conv_0 = new VaeConv2d(w.Sub("conv.0"), inChannels, outChannels, 3, padding: 1, padOutputs: TinySequential.PadOutputs);
        conv_2 = new VaeConv2d(w.Sub("conv.2"), outChannels, outChannels, 3, padding: 1, padOutputs: TinySequential.PadOutputs);
        conv_4 = new VaeConv2d(w.Sub("conv.4"), outChannels, outChannels, 3, padding: 1, padOutputs: TinySequential.PadOutputs);
        if (inChannels != outChannels)
            skip = new VaeConv2d(w.Sub("skip"), inChannels, outChannels, 1, bias: false);
        _act = act;
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // 1. conv: (B,Cin,H,W) → conv.0 → act → conv.2 → act → conv.4 → (B,Cout,H,W); each map freed once consumed
        //    (a 1024 px map of 64 channels is 256 MB in fp32) and activations applied in place.
        var h = conv_0.forward(x);
        _act(h);
        var h2 = conv_2.forward(h);
        h.Dispose();
        _act(h2);
        var h3 = conv_4.forward(h2);
        h2.Dispose();
        // 2. fuse(conv(x) + skip(x)) with fuse = ReLU
        if (skip is null)
            h3.add_(x);
        else
        {
            using var s = skip.forward(x);
            h3.add_(s);
        }
        F.relu(h3, inplace: true);
        return h3.MoveToOuterDisposeScope();
    }

    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters()
    {
        foreach (var (name, c) in new[] { ("conv.0", conv_0), ("conv.2", conv_2), ("conv.4", conv_4) })
        {
            yield return (name + ".weight", c.weight);
            yield return (name + ".bias", c.bias!);
        }
        if (skip is not null) yield return ("skip.weight", skip.weight);
    }

    public void Dispose() { conv_0.Dispose(); conv_2.Dispose(); conv_4.Dispose(); skip?.Dispose(); }
}

/// <summary>
/// Runs a TAESD <c>layers</c> sequential, freeing each intermediate as soon as the next layer has consumed it (the
/// dispose scope alone would hold every 1024 px map until the end).
/// </summary>
internal static class TinySequential
{
    /// <summary>
    /// Every TAESD conv whose output count bf16 cannot do (not a multiple of 16: the last convs, 64 → 3 and 64 → 4)
    /// runs in bf16 padded to 16 outputs rather than through VaeConv2d's fp32 route, which converts the whole
    /// 64-channel input to fp32 (measured at 1024 px: 0.046 s instead of 0.235 s CPU, 13 % of a bf16 decode).
    /// </summary>
    public const bool PadOutputs = true;

    /// <summary>
    /// Runs the layers on <paramref name="x"/> laid out channels-last (NHWC strides, NCHW shape). libtorch's
    /// oneDNN convolutions run natively in that layout and keep it for their output (the ReLUs, adds and the nearest
    /// upsampling keep it too), where an NCHW input is reordered before and after every conv. Measured on the real
    /// TAESD decoder at 1024 px, process CPU time per decode: bf16 6.1 s → 1.9 s (the AMX bf16 kernels need it), fp32
    /// 6.1 s → 4.3 s. The result is returned contiguous (NCHW) again, as callers expect.
    /// </summary>
    public static Tensor Run(ITinyLayer[] layers, Tensor x)
    {
        using var scope = NewDisposeScope();
        var nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);
        var y = RunLayers(layers, nhwc);
        return y.contiguous().MoveToOuterDisposeScope();
    }

    private static Tensor RunLayers(ITinyLayer[] layers, Tensor x)
    {
        Tensor h = x;
        foreach (var layer in layers)
        {
            var next = layer.forward(h);
            if (!ReferenceEquals(next, h) && !ReferenceEquals(h, x)) h.Dispose();
            h = next;
        }
        return h;
    }

    public static IEnumerable<(string Key, Tensor Tensor)> NamedParameters(ITinyLayer[] layers) =>
        layers.SelectMany((l, i) => l.NamedParameters().Select(p => ($"layers.{i}.{p.Key}", p.Tensor)));

    public static void Dispose(ITinyLayer[]? layers)
    {
        if (layers is null) return;
        foreach (var l in layers) l?.Dispose();
    }
}

/// <summary>
/// diffusers' <c>EncoderTiny</c> (autoencoders/vae.py). <c>layers</c>: for each level i, a 3×3 conv (level 0:
/// in → C with bias; later levels: C → C, stride 2, no bias) followed by num_encoder_blocks[i]
/// AutoencoderTinyBlocks; then a 3×3 conv C → latent_channels. Input images in [−1, 1] are mapped to [0, 1] first.
/// </summary>
internal sealed class EncoderTiny : IDisposable
{
    public readonly ITinyLayer[] layers;

    public EncoderTiny(Weights w, AutoencoderTinyConfig config)
    {
        var act = VaeActivation.Get(config.ActFn);
        var list = new List<ITinyLayer>();
        try
        {
            var ch = config.EncoderBlockOutChannels;
            for (int i = 0; i < ch.Length; i++)
            {
                var at = w.Sub($"layers.{list.Count}");
                list.Add(i == 0
                    ? new TinyConv(new VaeConv2d(at, config.InChannels, ch[0], 3, padding: 1, padOutputs: TinySequential.PadOutputs))
                    : new TinyConv(new VaeConv2d(at, ch[i], ch[i], 3, stride: 2, padding: 1, bias: false, padOutputs: TinySequential.PadOutputs)));
                for (int b = 0; b < config.NumEncoderBlocks[i]; b++)
                    list.Add(new AutoencoderTinyBlock(w.Sub($"layers.{list.Count}"), ch[i], ch[i], act));
            }
            list.Add(new TinyConv(new VaeConv2d(w.Sub($"layers.{list.Count}"), ch[^1], config.LatentChannels, 3, padding: 1, padOutputs: TinySequential.PadOutputs)));
        }
        catch
        {
            foreach (var l in list) l.Dispose();
            throw;
        }
        layers = [.. list];
    }

    /// <summary>(B,in,H,W) in [−1, 1], any float dtype → fp32 latents (B,latent,H/2^(levels−1),W/2^(levels−1)), computed in <paramref name="dtype"/>.</summary>
    public Tensor forward(Tensor image, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        // 1. [−1, 1] → [0, 1] (TAESD's convention), in fp32 before the cast to the compute dtype
        var x = image.to(ScalarType.Float32).add(1).div_(2).to(dtype);
        // 2. layers: (B,in,H,W) → (B,C,H,W) → … stride-2 levels … → (B,latent,H/8,W/8)
        var h = TinySequential.Run(layers, x);
        return h.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters() => TinySequential.NamedParameters(layers);

    public void Dispose() => TinySequential.Dispose(layers);
}

/// <summary>
/// diffusers' <c>DecoderTiny</c> (autoencoders/vae.py). <c>layers</c>: a 3×3 conv latent → C and the activation;
/// then for each level i, num_decoder_blocks[i] AutoencoderTinyBlocks, and on every level but the last an
/// <c>nn.Upsample(×2, nearest)</c> and a bias-free 3×3 conv C → C; the last level ends in a 3×3 conv C → out with
/// bias. The input is first soft-clamped, tanh(x/3)·3; the [0, 1] output is mapped to [−1, 1].
/// </summary>
internal sealed class DecoderTiny : IDisposable
{
    public readonly ITinyLayer[] layers;

    public DecoderTiny(Weights w, AutoencoderTinyConfig config)
    {
        var act = VaeActivation.Get(config.ActFn);
        var list = new List<ITinyLayer>();
        try
        {
            var ch = config.DecoderBlockOutChannels;
            list.Add(new TinyConv(new VaeConv2d(w.Sub("layers.0"), config.LatentChannels, ch[0], 3, padding: 1, padOutputs: TinySequential.PadOutputs)));
            list.Add(new TinyFunction(config.ActFn, act));
            double factor = config.UpsamplingScalingFactor;
            for (int i = 0; i < ch.Length; i++)
            {
                bool last = i == ch.Length - 1;
                for (int b = 0; b < config.NumDecoderBlocks[i]; b++)
                    list.Add(new AutoencoderTinyBlock(w.Sub($"layers.{list.Count}"), ch[i], ch[i], act));
                if (!last)
                    list.Add(new TinyFunction("upsample", x => F.interpolate(x, scale_factor: [factor, factor], mode: InterpolationMode.Nearest)));
                list.Add(new TinyConv(new VaeConv2d(w.Sub($"layers.{list.Count}"), ch[i], last ? config.OutChannels : ch[i], 3, padding: 1, bias: last, padOutputs: TinySequential.PadOutputs)));
            }
        }
        catch
        {
            foreach (var l in list) l.Dispose();
            throw;
        }
        layers = [.. list];
    }

    /// <summary>(B,latent,h,w), any float dtype → fp32 (B,out,8h,8w) in [−1, 1], computed in <paramref name="dtype"/>.</summary>
    public Tensor forward(Tensor latents, ScalarType dtype, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        // 1. Soft clamp: tanh(x / 3)·3 (fp32: 4 channels, free), then the compute dtype
        var x = latents.to(ScalarType.Float32).div(3).tanh_().mul_(3);
        trace?.Invoke("decoder.first_clamp", x);
        // 2. layers: (B,latent,h,w) → (B,C,h,w) → blocks/upsample/conv ×(levels−1) → (B,out,8h,8w), in [0, 1] nominally
        var h = TinySequential.Run(layers, x.to(dtype));
        // 3. [0, 1] → [−1, 1] (diffusers' convention), in fp32
        var y = h.to(ScalarType.Float32).mul_(2).sub_(1);
        return y.MoveToOuterDisposeScope();
    }

    public IEnumerable<(string Key, Tensor Tensor)> NamedParameters() => TinySequential.NamedParameters(layers);

    public void Dispose() => TinySequential.Dispose(layers);
}
