using System.Globalization;
using System.Security.Cryptography;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Generate;

/// <summary>
/// The <c>--image</c> source of an image-to-image run: its pixels (8-bit sRGB, read by <see cref="ImageReader"/>)
/// and the sha256 of the file, which the PNG records (with the strength) so <c>--from-png</c> can check that the same
/// source is given again.
/// </summary>
public sealed record ImageInput(string Path, string Sha256, RgbImage Image, bool ResizeToFit, string? Warning)
{
    /// <summary>Reads the file once: its bytes give the sha256 and the pixels. Any failure is an ImageReadException (exit code 2).</summary>
    public static (string Sha256, RgbImage Image) Read(string path)
    {
        // A regular file (not /dev/zero, a FIFO, a device) within the size limit, checked before reading; never
        // more than the limit is read.
        byte[] bytes;
        try { bytes = InputFiles.ReadBounded("--image", path, ImageReader.MaxFileBytes); }
        catch (UsageException e) { throw new ImageReadException(e.Message, e); }
        return (Convert.ToHexStringLower(SHA256.HashData(bytes)), ImageReader.Decode(bytes, path));
    }

    /// <summary>
    /// Applies <c>--image</c>, <c>--strength</c> and <c>--resize-to-fit</c> (and what a <c>--from-png</c> record says)
    /// to the settings, before any model work. Returns the settings to run and the source, or null for text-to-image.
    /// </summary>
    public static (GenerationSettings Settings, ImageInput? Image) Plan(GenerationSettings settings, GenerateCommand.Args a)
    {
        string? recordedSha = a.FromPng is not null ? settings.ImageSha256 : null;
        if (a.Image is null)
        {
            if (recordedSha is not null)
                throw new UsageException($"--from-png: {a.FromPng} was made from a source image (sha256 {recordedSha}) at strength " +
                    $"{settings.Strength?.ToString(CultureInfo.InvariantCulture)}; give that image again with --image FILE.");
            if (a.Strength is not null) throw new UsageException("--strength only applies to image-to-image: give --image FILE too.");
            if (a.ResizeToFit) throw new UsageException("--resize-to-fit only applies to image-to-image: give --image FILE too.");
            return (settings with { Strength = null, ImageSha256 = null }, null);
        }
        if (a.Height is not null || a.Width is not null)
            throw new UsageException("--image: the output has the image's size, so --width/--height cannot be given with it " +
                                     "(--resize-to-fit resizes an image whose sides are not multiples of 16).");

        var (sha, image) = Read(a.Image);
        string? warning = recordedSha is not null && recordedSha != sha
            ? $"--image {a.Image} is not the source recorded in {a.FromPng} (sha256 {sha} instead of {recordedSha}): the result will differ."
            : null;

        // The size: --resize-to-fit decides it once the model's size is known (Fit); a --from-png record keeps its
        // size (it may come from an earlier --resize-to-fit); otherwise the image's own size, which must fit the
        // model's multiple (checked by Fit, which knows the model).
        int? width = null, height = null;
        if (!a.ResizeToFit)
            (width, height) = recordedSha is not null && settings.Width is { } rw && settings.Height is { } rh
                ? (rw, rh) : (image.Width, image.Height);

        double strength = a.Strength ?? settings.Strength ?? ImageToImage.DefaultStrength;
        settings = settings with
        {
            Strength = strength,
            ImageSha256 = sha,
            Width = width,
            Height = height,
            // Image-to-image never bins: the output has the (fitted) image's size.
            ResolutionBinning = false,
        };
        return (settings, new ImageInput(a.Image, sha, image, a.ResizeToFit, warning));
    }

    /// <summary>
    /// The source at the size the run uses: with --resize-to-fit, scaled to at most the model's pixel area
    /// (sample_size·8 squared, keeping the aspect ratio) with sides rounded down to multiples of 16; otherwise the
    /// planned size (the image's own, or a --from-png record's). Resampling is libvips' Lanczos-3.
    /// </summary>
    public RgbImage Fit(GenerationSettings planned, PixArtPipeline model)
    {
        var (w, h) = ResizeToFit
            ? Checked(Path, () => ImageToImage.OutputSize(Image.Width, Image.Height, resizeToFit: true, (long)model.DefaultWidth * model.DefaultHeight,
                GenerationLimits.Cli.MaxSide, "--resize-to-fit", model.SizeMultiple))
            : Checked(Path, () => ImageToImage.OutputSize(planned.Width ?? Image.Width, planned.Height ?? Image.Height, resizeToFit: false, maxPixels: 0,
                GenerationLimits.Cli.MaxSide, "--resize-to-fit", model.SizeMultiple));
        return ImageToImage.Resize(Image, w, h);
    }

    /// <summary>The size rule's ArgumentException as a command-line mistake naming the file (exit code 2).</summary>
    private static (int Width, int Height) Checked(string path, Func<(int, int)> size)
    {
        try { return size(); }
        catch (ArgumentException e) { throw new UsageException($"--image: {path}: {e.Message}"); }
    }
}
