using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>One aspect-ratio bin: the ratio key (height/width, as written in diffusers) and its [height, width].</summary>
/// <param name="Ratio">The ratio height/width as diffusers' table writes it, e.g. "0.57".</param>
/// <param name="Height">The bin's height in pixels.</param>
/// <param name="Width">The bin's width in pixels.</param>
public sealed record AspectRatioBin(string Ratio, double Height, double Width)
{
    /// <summary>Python's <c>float(key)</c>.</summary>
    public double RatioValue { get; } = double.Parse(Ratio, System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>
/// PixArt resolution binning (diffusers v0.29.2): the aspect-ratio bin tables, in diffusers' key order (it matters:
/// ties go to the first key), <c>PixArtImageProcessor.classify_height_width_bin</c> and
/// <c>resize_and_crop_tensor</c>.
/// </summary>
internal static class AspectRatioBins
{
    /// <summary><c>ASPECT_RATIO_2048_BIN</c> from diffusers' pipeline_pixart_sigma.py (40 bins).</summary>
    public static readonly IReadOnlyList<AspectRatioBin> AspectRatio2048Bin =
    [
        new("0.25", 1024.0, 4096.0), new("0.26", 1024.0, 3968.0), new("0.27", 1024.0, 3840.0),
        new("0.28", 1024.0, 3712.0), new("0.32", 1152.0, 3584.0), new("0.33", 1152.0, 3456.0),
        new("0.35", 1152.0, 3328.0), new("0.4", 1280.0, 3200.0), new("0.42", 1280.0, 3072.0),
        new("0.48", 1408.0, 2944.0), new("0.5", 1408.0, 2816.0), new("0.52", 1408.0, 2688.0),
        new("0.57", 1536.0, 2688.0), new("0.6", 1536.0, 2560.0), new("0.68", 1664.0, 2432.0),
        new("0.72", 1664.0, 2304.0), new("0.78", 1792.0, 2304.0), new("0.82", 1792.0, 2176.0),
        new("0.88", 1920.0, 2176.0), new("0.94", 1920.0, 2048.0), new("1.0", 2048.0, 2048.0),
        new("1.07", 2048.0, 1920.0), new("1.13", 2176.0, 1920.0), new("1.21", 2176.0, 1792.0),
        new("1.29", 2304.0, 1792.0), new("1.38", 2304.0, 1664.0), new("1.46", 2432.0, 1664.0),
        new("1.67", 2560.0, 1536.0), new("1.75", 2688.0, 1536.0), new("2.0", 2816.0, 1408.0),
        new("2.09", 2944.0, 1408.0), new("2.4", 3072.0, 1280.0), new("2.5", 3200.0, 1280.0),
        new("2.89", 3328.0, 1152.0), new("3.0", 3456.0, 1152.0), new("3.11", 3584.0, 1152.0),
        new("3.62", 3712.0, 1024.0), new("3.75", 3840.0, 1024.0), new("3.88", 3968.0, 1024.0),
        new("4.0", 4096.0, 1024.0),
    ];

    /// <summary><c>ASPECT_RATIO_1024_BIN</c> from diffusers' pipeline_pixart_alpha.py (33 bins).</summary>
    public static readonly IReadOnlyList<AspectRatioBin> AspectRatio1024Bin =
    [
        new("0.25", 512.0, 2048.0), new("0.28", 512.0, 1856.0), new("0.32", 576.0, 1792.0),
        new("0.33", 576.0, 1728.0), new("0.35", 576.0, 1664.0), new("0.4", 640.0, 1600.0),
        new("0.42", 640.0, 1536.0), new("0.48", 704.0, 1472.0), new("0.5", 704.0, 1408.0),
        new("0.52", 704.0, 1344.0), new("0.57", 768.0, 1344.0), new("0.6", 768.0, 1280.0),
        new("0.68", 832.0, 1216.0), new("0.72", 832.0, 1152.0), new("0.78", 896.0, 1152.0),
        new("0.82", 896.0, 1088.0), new("0.88", 960.0, 1088.0), new("0.94", 960.0, 1024.0),
        new("1.0", 1024.0, 1024.0), new("1.07", 1024.0, 960.0), new("1.13", 1088.0, 960.0),
        new("1.21", 1088.0, 896.0), new("1.29", 1152.0, 896.0), new("1.38", 1152.0, 832.0),
        new("1.46", 1216.0, 832.0), new("1.67", 1280.0, 768.0), new("1.75", 1344.0, 768.0),
        new("2.0", 1408.0, 704.0), new("2.09", 1472.0, 704.0), new("2.4", 1536.0, 640.0),
        new("2.5", 1600.0, 640.0), new("3.0", 1728.0, 576.0), new("4.0", 2048.0, 512.0),
    ];

    /// <summary><c>ASPECT_RATIO_512_BIN</c> from diffusers' pipeline_pixart_alpha.py (33 bins).</summary>
    public static readonly IReadOnlyList<AspectRatioBin> AspectRatio512Bin =
    [
        new("0.25", 256.0, 1024.0), new("0.28", 256.0, 928.0), new("0.32", 288.0, 896.0),
        new("0.33", 288.0, 864.0), new("0.35", 288.0, 832.0), new("0.4", 320.0, 800.0),
        new("0.42", 320.0, 768.0), new("0.48", 352.0, 736.0), new("0.5", 352.0, 704.0),
        new("0.52", 352.0, 672.0), new("0.57", 384.0, 672.0), new("0.6", 384.0, 640.0),
        new("0.68", 416.0, 608.0), new("0.72", 416.0, 576.0), new("0.78", 448.0, 576.0),
        new("0.82", 448.0, 544.0), new("0.88", 480.0, 544.0), new("0.94", 480.0, 512.0),
        new("1.0", 512.0, 512.0), new("1.07", 512.0, 480.0), new("1.13", 544.0, 480.0),
        new("1.21", 544.0, 448.0), new("1.29", 576.0, 448.0), new("1.38", 576.0, 416.0),
        new("1.46", 608.0, 416.0), new("1.67", 640.0, 384.0), new("1.75", 672.0, 384.0),
        new("2.0", 704.0, 352.0), new("2.09", 736.0, 352.0), new("2.4", 768.0, 320.0),
        new("2.5", 800.0, 320.0), new("3.0", 864.0, 288.0), new("4.0", 1024.0, 256.0),
    ];

    /// <summary><c>ASPECT_RATIO_256_BIN</c> from diffusers' pipeline_pixart_alpha.py (33 bins).</summary>
    public static readonly IReadOnlyList<AspectRatioBin> AspectRatio256Bin =
    [
        new("0.25", 128.0, 512.0), new("0.28", 128.0, 464.0), new("0.32", 144.0, 448.0),
        new("0.33", 144.0, 432.0), new("0.35", 144.0, 416.0), new("0.4", 160.0, 400.0),
        new("0.42", 160.0, 384.0), new("0.48", 176.0, 368.0), new("0.5", 176.0, 352.0),
        new("0.52", 176.0, 336.0), new("0.57", 192.0, 336.0), new("0.6", 192.0, 320.0),
        new("0.68", 208.0, 304.0), new("0.72", 208.0, 288.0), new("0.78", 224.0, 288.0),
        new("0.82", 224.0, 272.0), new("0.88", 240.0, 272.0), new("0.94", 240.0, 256.0),
        new("1.0", 256.0, 256.0), new("1.07", 256.0, 240.0), new("1.13", 272.0, 240.0),
        new("1.21", 272.0, 224.0), new("1.29", 288.0, 224.0), new("1.38", 288.0, 208.0),
        new("1.46", 304.0, 208.0), new("1.67", 320.0, 192.0), new("1.75", 336.0, 192.0),
        new("2.0", 352.0, 176.0), new("2.09", 368.0, 176.0), new("2.4", 384.0, 160.0),
        new("2.5", 400.0, 160.0), new("3.0", 432.0, 144.0), new("4.0", 512.0, 128.0),
    ];

    /// <summary>
    /// The bins a pipeline's <c>__call__</c> uses for <c>transformer.config.sample_size</c>: 128 → 1024, 64 → 512,
    /// 32 → 256, and with <paramref name="with2048"/> (PixArtSigmaPipeline) 256 → 2048; diffusers raises "Invalid
    /// sample size" for any other.
    /// </summary>
    public static IReadOnlyList<AspectRatioBin> BinsForSampleSize(int sampleSize, bool with2048 = false) => sampleSize switch
    {
        256 when with2048 => AspectRatio2048Bin,
        128 => AspectRatio1024Bin,
        64 => AspectRatio512Bin,
        32 => AspectRatio256Bin,
        _ => throw new ArgumentException($"Invalid sample size {sampleSize}: resolution binning needs sample_size {(with2048 ? "256, " : "")}128, 64 or 32; turn binning off.", "use_resolution_binning"),
    };

    /// <summary>
    /// The bin whose ratio key is closest to height/width (float64); on ties the first key wins, as Python's
    /// <c>min</c>. Returns the bin's (height, width) as ints.
    /// </summary>
    public static (int Height, int Width) ClassifyHeightWidthBin(int height, int width, IReadOnlyList<AspectRatioBin> ratios)
    {
        ArgumentNullException.ThrowIfNull(ratios);
        if (width == 0) throw new ArgumentException("width must not be 0.", nameof(width));
        if (ratios.Count == 0) throw new ArgumentException("The bin table is empty.", nameof(ratios));
        double ar = (double)height / width;
        AspectRatioBin best = ratios[0];
        double bestDist = Math.Abs(best.RatioValue - ar);
        for (int i = 1; i < ratios.Count; i++)
        {
            double dist = Math.Abs(ratios[i].RatioValue - ar);
            if (dist < bestDist) { best = ratios[i]; bestDist = dist; }
        }
        return ((int)best.Height, (int)best.Width);
    }

    /// <summary>
    /// Resizes (N, C, H, W) images to cover (newHeight, newWidth) with bilinear interpolation
    /// (<c>align_corners=False</c>, no antialias), then center-crops to exactly that size. Sizes follow Python:
    /// ratio = max(newH/H, newW/W) in float64, resized = int(size·ratio) (truncation), crop start = (resized − new) // 2.
    /// Returns a new tensor handle (an alias of the input when no resize is needed).
    /// </summary>
    public static Tensor ResizeAndCropTensor(Tensor samples, int newWidth, int newHeight)
    {
        ArgumentNullException.ThrowIfNull(samples);
        if (samples.dim() != 4)
            throw new ArgumentException($"samples must be (N, C, H, W), got shape [{string.Join(", ", samples.shape)}].", nameof(samples));
        if (newWidth <= 0) throw new ArgumentException($"newWidth must be positive, got {newWidth}.", nameof(newWidth));
        if (newHeight <= 0) throw new ArgumentException($"newHeight must be positive, got {newHeight}.", nameof(newHeight));
        long origHeight = samples.shape[2], origWidth = samples.shape[3];
        if (origHeight == newHeight && origWidth == newWidth) return samples.alias();

        using var scope = torch.NewDisposeScope();
        double ratio = Math.Max((double)newHeight / origHeight, (double)newWidth / origWidth);
        long resizedWidth = (long)(origWidth * ratio);
        long resizedHeight = (long)(origHeight * ratio);
        // 1. Resize
        var resized = torch.nn.functional.interpolate(samples, size: [resizedHeight, resizedWidth],
            mode: InterpolationMode.Bilinear, align_corners: false);
        // 2. Center crop, with Python's floor division and slice clamping
        long startX = FloorDiv(resizedWidth - newWidth, 2);
        long startY = FloorDiv(resizedHeight - newHeight, 2);
        var (y0, ny) = PySlice(resizedHeight, startY, startY + newHeight);
        var (x0, nx) = PySlice(resizedWidth, startX, startX + newWidth);
        return resized.narrow(2, y0, ny).narrow(3, x0, nx).MoveToOuterDisposeScope();
    }

    private static long FloorDiv(long a, long b)
    {
        long q = a / b;
        if (a % b != 0 && (a < 0) != (b < 0)) q--;
        return q;
    }

    /// <summary>Python's <c>[start:end]</c> on a dimension of <paramref name="length"/>: (first index, count).</summary>
    private static (long Start, long Count) PySlice(long length, long start, long end)
    {
        static long Norm(long i, long len) => i < 0 ? Math.Max(0, i + len) : Math.Min(i, len);
        long s = Norm(start, length), e = Norm(end, length);
        return (s, Math.Max(0, e - s));
    }
}
