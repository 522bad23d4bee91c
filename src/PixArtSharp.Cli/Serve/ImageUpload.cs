using System.Security.Cryptography;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// The source image of an image-to-image request: the base64 <c>image</c> field of the JSON body (plain base64 or a
/// <c>data:image/…;base64,</c> URL), decoded by <see cref="ImageReader"/> (PNG, JPEG, WebP; pixel limit checked
/// before decoding) and fitted to the size the run uses. Only JSON is accepted, not multipart: a cross-site HTML form
/// can post multipart without a CORS preflight, JSON it cannot (see ServerApp.Generate).
/// </summary>
public sealed record ImageUpload(string Sha256, RgbImage Image)
{
    /// <summary>
    /// Decodes the upload and applies it to <paramref name="settings"/> the way <c>pixart generate --image</c> does:
    /// strength (default 0.8), the source's sha256, the output size (the image's own, which must be a multiple of 16
    /// per side and within the server's limits, or with <paramref name="resizeToFit"/> the model's pixel area), and no
    /// resolution binning. Every problem is a 400 naming the field.
    /// </summary>
    public static (GenerationSettings Settings, ImageUpload Upload) Apply(string base64, bool resizeToFit, GenerationSettings settings, PixArtPipeline model)
    {
        byte[] bytes = DecodeBase64(base64);
        // At most ServeSafety.MaxConcurrentDecodes decodes at once (the others wait briefly, then 429), the pixel
        // count checked from the header before any pixel is decoded, and the memory given back afterwards.
        return ServeSafety.LimitDecode(() => Fit(bytes, resizeToFit, settings, model));
    }

    private static (GenerationSettings Settings, ImageUpload Upload) Fit(byte[] bytes, bool resizeToFit, GenerationSettings settings, PixArtPipeline model)
    {
        RgbImage image;
        try
        {
            image = ImageReader.Decode(bytes, "the uploaded image", ServeSafety.MaxUploadPixels);
        }
        catch (ImageReadException e)
        {
            throw new ApiException(400, e.Message, "image", "bad_image");
        }

        int width, height;
        try
        {
            (width, height) = ImageToImage.OutputSize(image.Width, image.Height, resizeToFit, (long)model.DefaultWidth * model.DefaultHeight,
                GenerationLimits.Server.MaxSide, "\"resize_to_fit\": true", model.SizeMultiple);
        }
        catch (ArgumentException e)
        {
            throw new ApiException(400, e.Message, "image", "bad_image_size");
        }

        var fitted = ImageToImage.Resize(image, width, height);
        settings = settings with
        {
            Strength = settings.Strength ?? ImageToImage.DefaultStrength,
            ImageSha256 = Convert.ToHexStringLower(SHA256.HashData(bytes)),
            Width = width,
            Height = height,
            // Image-to-image never bins: the output has the (fitted) image's size.
            ResolutionBinning = false,
        };
        return (settings, new ImageUpload(settings.ImageSha256!, fitted));
    }

    private static byte[] DecodeBase64(string text)
    {
        var s = text.AsSpan().Trim();
        if (s.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            int comma = s.IndexOf(',');
            if (comma < 0 || !s[..comma].EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
                throw new ApiException(400, "'image' is a data URL but not a base64 one; send data:image/png;base64,… or plain base64.", "image", "bad_image");
            s = s[(comma + 1)..];
        }
        if (s.IsEmpty) throw new ApiException(400, "'image' is empty; send the PNG, JPEG or WebP file as base64.", "image", "bad_image");
        byte[] buffer = new byte[s.Length / 4 * 3 + 3];
        if (!Convert.TryFromBase64Chars(s, buffer, out int written))
            throw new ApiException(400, "'image' is not valid base64; send the PNG, JPEG or WebP file's bytes base64-encoded.", "image", "bad_image");
        return buffer[..written];
    }
}
