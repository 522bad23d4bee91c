using PixArtSharp.Pipeline;

namespace PixArtSharp.Imaging;

/// <summary>The file formats a generated image can be answered in.</summary>
public enum ImageFormat
{
    /// <summary>PNG, lossless, with the run's settings in text chunks (what <c>pixart generate</c> writes).</summary>
    Png,
    /// <summary>JPEG (libvips), lossy, no metadata.</summary>
    Jpeg,
    /// <summary>WebP (libvips), lossy, no metadata.</summary>
    Webp,
}

/// <summary>
/// Encodes a generated image as PNG, JPEG or WebP. PNG goes through <see cref="ImageFiles.EncodePng"/>, so it is
/// byte for byte the file <c>pixart generate</c> writes; JPEG and WebP go through libvips (NetVips) at a quality of
/// 1–100, which is how OpenAI's <c>output_compression</c> (0–100, default 100) is read: the higher, the better the
/// picture and the larger the file. WebP at 100 is lossless WebP (libvips' lossy WebP always halves the colour
/// resolution, which no quality setting undoes); JPEG at 90 and above keeps full colour resolution (libvips' rule).
/// </summary>
public static class ImageEncoder
{
    /// <summary>OpenAI's default <c>output_compression</c>: 100, the best quality.</summary>
    public const int DefaultQuality = 100;

    /// <summary>The media type of <paramref name="format"/>: image/png, image/jpeg or image/webp.</summary>
    public static string MediaType(ImageFormat format) => format switch
    {
        ImageFormat.Png => "image/png",
        ImageFormat.Jpeg => "image/jpeg",
        ImageFormat.Webp => "image/webp",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "Not an image format."),
    };

    /// <summary>
    /// Parses a format as OpenAI names it (<c>png</c>, <c>jpeg</c>, <c>webp</c>; also <c>jpg</c>) or as a media type
    /// (<c>image/png</c>, …); case-insensitive. Null when it is none of them.
    /// </summary>
    public static ImageFormat? TryParse(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        "png" or "image/png" => ImageFormat.Png,
        "jpeg" or "jpg" or "image/jpeg" or "image/jpg" => ImageFormat.Jpeg,
        "webp" or "image/webp" => ImageFormat.Webp,
        _ => null,
    };

    /// <summary>
    /// Image <paramref name="imageIndex"/> of a batch in <paramref name="format"/>. PNG: exactly
    /// <see cref="ImageFiles.EncodePng"/> (settings recorded); JPEG/WebP: <paramref name="rgb"/> at
    /// <paramref name="quality"/> (null = <see cref="DefaultQuality"/>).
    /// </summary>
    public static byte[] Encode(ImageFormat format, GenerationSettings settings, int imageIndex, ReadOnlySpan<byte> rgb, int width, int height,
                                ModelInfo model, int? quality = null) =>
        format == ImageFormat.Png
            ? ImageFiles.EncodePng(settings, imageIndex, rgb, width, height, model)
            : EncodeLossy(format, rgb.ToArray(), width, height, quality);

    /// <summary>
    /// A PNG (as <see cref="ImageFiles.EncodePng"/> makes it) in <paramref name="format"/>: the same bytes for PNG,
    /// else its pixels re-encoded (decoding a PNG is lossless, so this equals encoding the pixels directly).
    /// </summary>
    public static byte[] FromPng(byte[] png, ImageFormat format, int? quality = null)
    {
        ArgumentNullException.ThrowIfNull(png);
        if (format == ImageFormat.Png) return png;
        var image = ImageReader.Decode(png, "the generated PNG");
        return EncodeLossy(format, image.Pixels, image.Width, image.Height, quality);
    }

    /// <summary>Checks a quality / <c>output_compression</c> value: 0–100 (0 is read as 1, libvips' lowest).</summary>
    internal static int CheckQuality(int? quality, string paramName = "quality")
    {
        int q = quality ?? DefaultQuality;
        if (q is < 0 or > 100)
            throw new ArgumentOutOfRangeException(paramName, q, $"{paramName} must be between 0 and 100, got {q}.");
        return Math.Max(1, q);
    }

    private static byte[] EncodeLossy(ImageFormat format, byte[] rgb, int width, int height, int? quality)
    {
        int q = CheckQuality(quality);
        if (rgb.Length != (long)width * height * 3)
            throw new ArgumentException($"Expected {width}×{height}×3 = {(long)width * height * 3} RGB bytes, got {rgb.Length}.", nameof(rgb));
        using var image = NetVips.Image.NewFromMemory(rgb, width, height, 3, NetVips.Enums.BandFormat.Uchar);
        // strip: no libvips metadata; the settings live in the PNG only.
        return format switch
        {
            ImageFormat.Jpeg => image.WriteToBuffer($".jpg[Q={q},strip]"),
            ImageFormat.Webp => image.WriteToBuffer(q >= 100 ? ".webp[lossless,strip]" : $".webp[Q={q},smart_subsample,strip]"),
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, "Not a lossy format."),
        };
    }
}
