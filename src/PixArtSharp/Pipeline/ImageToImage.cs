using PixArtSharp.Imaging;
using PixArtSharp.Schedulers;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>Which timesteps an image-to-image call runs, and where it starts in the full schedule.</summary>
/// <param name="Timesteps">The timesteps the loop runs, in order; the first one is where the image latent is noised.</param>
/// <param name="FullSchedule">The scheduler's whole schedule after set_timesteps.</param>
/// <param name="TStart">DPM-Solver++/SA-Solver: the index of the first kept step (begin_index); null for LCM.</param>
internal sealed record ImageToImageSchedule(long[] Timesteps, long[] FullSchedule, int? TStart);

/// <summary>
/// The parts of PixArt image-to-image (SDEdit) that are not the denoising loop, as the fixtures' composition takes
/// them from diffusers 0.29.2: LatentConsistencyModelImg2ImgPipeline for LCM, StableDiffusionImg2ImgPipeline for
/// DPM-Solver++ (and SA-Solver, which has the same set_timesteps / set_begin_index contract).
/// </summary>
public static class ImageToImage
{
    /// <summary>diffusers' default strength for both img2img pipelines.</summary>
    public const double DefaultStrength = 0.8;

    /// <summary>
    /// Image sides must be multiples of this times the VAE scale factor (8·2 = 16): the latent is patchified by 2.
    /// diffusers' preprocessor would round the size down and resize; PixArtSharp refuses instead.
    /// </summary>
    internal const int PatchSize = 2;

    /// <summary>
    /// VaeImageProcessor.preprocess of a PIL RGB image: uint8/255 in float32, NCHW, then 2x − 1 → (1, 3, H, W) in [−1, 1].
    /// </summary>
    public static Tensor Preprocess(RgbImage image, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        using var scope = NewDisposeScope();
        // numpy: np.array(pil).astype(np.float32) / 255.0 — a float32 division, rounded once.
        var hwc = tensor(image.Pixels, [image.Height, image.Width, 3], ScalarType.Byte).to(ScalarType.Float32).div(255f);
        var nchw = hwc.permute(2, 0, 1).unsqueeze(0).contiguous();
        // normalize: 2.0 * images - 1.0
        var result = nchw.mul(2f).sub(1f);
        return result.to(device ?? CPU).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Sets the scheduler's timesteps for an image-to-image call and returns the ones that run.
    /// <list type="bullet">
    /// <item>LCM (<c>LatentConsistencyModelImg2ImgPipeline</c>): <c>set_timesteps(n, strength=s)</c> compresses the
    /// origin schedule to <c>arange(1, int(50·s)+1)·20 − 1</c> and picks n of them: <b>all n steps run</b>. Too few
    /// origin steps for n is diffusers' ValueError, here an <see cref="ArgumentException"/>.</item>
    /// <item>DPM-Solver++ / SA-Solver (<c>StableDiffusionImg2ImgPipeline.get_timesteps</c>): <c>set_timesteps(n)</c>;
    /// init = min(int(n·s), n); t_start = n − init; the last init timesteps run, and the scheduler's begin index is
    /// t_start. int() truncates the float64 product (10·0.7 → 7, 100·0.29 → 28). When no step would remain
    /// (int(n·s) = 0) diffusers fails later with an index error; here it is an <see cref="ArgumentException"/>.</item>
    /// </list>
    /// </summary>
    internal static ImageToImageSchedule SetTimesteps(IScheduler scheduler, int? numInferenceSteps, IReadOnlyList<int>? timesteps, double strength)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        CheckStrength(strength);
        if (scheduler is LCMScheduler lcm)
        {
            lcm.SetTimesteps(timesteps is null ? numInferenceSteps : null, timesteps, strength);
            if (lcm.Timesteps.Length == 0)
                throw new ArgumentException($"strength {Py(strength)} leaves no timestep of the {timesteps!.Count} given to run.", nameof(strength));
            return new ImageToImageSchedule(lcm.Timesteps, lcm.Timesteps, null);
        }

        scheduler.SetTimesteps(timesteps is null ? numInferenceSteps : null, timesteps);
        var full = scheduler.Timesteps;
        int n = timesteps?.Count ?? numInferenceSteps!.Value;
        // init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        int initTimestep = (int)Math.Min((long)Math.Truncate(n * strength), n);
        // t_start = max(num_inference_steps - init_timestep, 0); timesteps[t_start * order:] (order is 1)
        int tStart = Math.Max(n - initTimestep, 0);
        if (initTimestep < 1)
            throw new ArgumentException(
                $"strength {Py(strength)} × {n} steps keeps int({Py(n * strength)}) = 0 steps: nothing would run. " +
                $"Raise strength to at least {Py(1.0 / n)} or use more steps.", nameof(strength));
        scheduler.SetBeginIndex(tStart);
        return new ImageToImageSchedule(full[tStart..], full, tStart);
    }

    /// <summary>
    /// The size <c>--resize-to-fit</c> gives an image: scaled down (never up) so it has at most
    /// <paramref name="maxPixels"/> pixels, keeping the aspect ratio, then each side rounded down to a multiple of
    /// <paramref name="multiple"/> (at least one multiple).
    /// </summary>
    public static (int Width, int Height) FitSize(int width, int height, long maxPixels, int multiple = 16)
    {
        if (width < 1 || height < 1) throw new ArgumentException($"The size must be positive, got {width}×{height}.", nameof(width));
        if (maxPixels < (long)multiple * multiple) throw new ArgumentException($"maxPixels must be at least {multiple}², got {maxPixels}.", nameof(maxPixels));
        double scale = Math.Min(1.0, Math.Sqrt((double)maxPixels / ((double)width * height)));
        int w = Math.Max(multiple, (int)Math.Floor(width * scale) / multiple * multiple);
        int h = Math.Max(multiple, (int)Math.Floor(height * scale) / multiple * multiple);
        return (w, h);
    }

    /// <summary>
    /// The output size image-to-image gives a <paramref name="width"/>×<paramref name="height"/> source: with
    /// <paramref name="resizeToFit"/> its <see cref="FitSize"/> to <paramref name="maxPixels"/>; otherwise its own,
    /// which must be a multiple of <paramref name="multiple"/> on both sides. Either way at most
    /// <paramref name="maxSide"/> per side. Throws ArgumentException saying what is wrong and what to do;
    /// <paramref name="resizeOption"/> is how the caller's user asks for the resize (a flag, a JSON field).
    /// </summary>
    internal static (int Width, int Height) OutputSize(int width, int height, bool resizeToFit, long maxPixels, int maxSide, string resizeOption, int multiple = 16)
    {
        var (w, h) = resizeToFit ? FitSize(width, height, maxPixels, multiple) : (width, height);
        if (w % multiple != 0 || h % multiple != 0)
            throw new ArgumentException($"The image is {width}x{height}; image-to-image needs both sides to be multiples of {multiple}. " +
                                        $"Use {resizeOption} to scale it to the model's size, or crop it (e.g. to {Math.Max(multiple, w / multiple * multiple)}x{Math.Max(multiple, h / multiple * multiple)}).");
        if (w > maxSide || h > maxSide)
            throw new ArgumentException(resizeToFit
                ? $"The image is {width}x{height}; scaled to the model's size it would be {w}x{h}, over the limit of {maxSide} pixels per side. Crop it to a less extreme aspect ratio."
                : $"The image is {width}x{height}; the limit is {maxSide} pixels per side. Use {resizeOption} to scale it to the model's size.");
        return (w, h);
    }

    /// <summary>
    /// Resamples <paramref name="image"/> to exactly <paramref name="width"/>×<paramref name="height"/> with libvips'
    /// Lanczos-3 (diffusers' image processor resizes with PIL's Lanczos); the same image is returned when it already
    /// has that size. Deterministic, so a recorded size reproduces the same pixels.
    /// </summary>
    public static RgbImage Resize(RgbImage image, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (width < 1 || height < 1) throw new ArgumentException($"The size must be positive, got {width}×{height}.", nameof(width));
        if (image.Width == width && image.Height == height) return image;
        using var src = NetVips.Image.NewFromMemory(image.Pixels, image.Width, image.Height, 3, NetVips.Enums.BandFormat.Uchar);
        using var resized = src.Resize((double)width / image.Width, NetVips.Enums.Kernel.Lanczos3, vscale: (double)height / image.Height);
        // vips rounds the output size; trim or pad by edge repetition to the exact size asked for.
        using var exact = resized.Width == width && resized.Height == height
            ? resized.Copy()
            : resized.Embed(0, 0, width, height, extend: NetVips.Enums.Extend.Copy);
        var pixels = exact.WriteToMemory<byte>();
        return new RgbImage(width, height, pixels);
    }

    /// <summary>strength must be in (0, 1].</summary>
    internal static void CheckStrength(double strength)
    {
        if (double.IsNaN(strength) || strength <= 0 || strength > 1)
            throw new ArgumentException($"The value of strength should be in (0.0, 1.0] but is {Py(strength)}.", nameof(strength));
    }

    private static string Py(double v) => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
}
