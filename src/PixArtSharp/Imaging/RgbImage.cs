namespace PixArtSharp.Imaging;

/// <summary>
/// An 8-bit sRGB image: <see cref="Pixels"/> holds Height × Width × 3 bytes, row by row, R G B per pixel (HWC) —
/// the layout of a PIL "RGB" image as numpy sees it.
/// </summary>
public sealed class RgbImage
{
    /// <summary>Width in pixels (at least 1).</summary>
    public int Width { get; }
    /// <summary>Height in pixels (at least 1).</summary>
    public int Height { get; }
    /// <summary>Height × Width × 3 bytes, rows top to bottom, R G B per pixel; not copied (the caller's array).</summary>
    public byte[] Pixels { get; }

    /// <summary>Wraps <paramref name="pixels"/> (Height × Width × 3 bytes, HWC); throws ArgumentException when the length does not match the size.</summary>
    public RgbImage(int width, int height, byte[] pixels)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        if (width < 1 || height < 1)
            throw new ArgumentException($"An image needs a positive size, got {width}×{height}.", nameof(width));
        if (pixels.LongLength != (long)width * height * 3)
            throw new ArgumentException($"{width}×{height} RGB needs {(long)width * height * 3} bytes, got {pixels.LongLength}.", nameof(pixels));
        Width = width;
        Height = height;
        Pixels = pixels;
    }
}
