using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// <c>POST /v1/images/edits</c>: OpenAI's image-edit call, which is how OpenAI clients (the official .NET and npm
/// packages, MEAI's <c>EditImageAsync</c>) ask for image-to-image. A multipart/form-data body: the file
/// <c>image</c> (PNG, JPEG or WebP; <c>image[]</c> with one file is accepted too), <c>prompt</c>, and the same optional
/// fields as <c>/v1/images/generations</c> as form values (<c>n</c>, <c>size</c>, <c>response_format</c>,
/// <c>output_format</c>, <c>output_compression</c>, <c>quality</c>, <c>moderation</c>, <c>model</c>, <c>user</c>, and
/// PixArt's <c>negative_prompt</c>, <c>steps</c>, <c>guidance</c>, <c>seed</c>, <c>style</c>, <c>scheduler</c>,
/// <c>strength</c>, <c>resize_to_fit</c>). It runs exactly what the JSON route runs for <c>"image": base64</c>: the
/// same decoder, pixel and size limits (<see cref="ImageUpload"/>), settings checks and queue.
/// <para>
/// Multipart is what an HTML form on any site can post without a CORS preflight, so this route refuses a request
/// whose <c>Origin</c> (or <c>Sec-Fetch-Site</c>) says it comes from another site; with <c>--token</c> the bearer
/// token is required as on every /v1 route (a form cannot send an Authorization header).
/// </para>
/// </summary>
public static class ImageEdits
{
    /// <summary>The largest image file: what fits base64-encoded in the JSON route's body limit (12 MiB).</summary>
    public const int MaxImageBytes = ServerApp.MaxBodyBytes / 4 * 3;

    private static readonly HashSet<string> TextFields =
    [
        "prompt", "n", "size", "response_format", "output_format", "output_compression", "quality", "moderation", "model", "user",
        "negative_prompt", "steps", "guidance", "seed", "style", "scheduler", "strength", "resize_to_fit",
    ];

    /// <summary>Maps the route (one line in <see cref="ServerApp.Build"/>).</summary>
    public static void Map(WebApplication app, IJobQueue queue) =>
        app.MapPost("/v1/images/edits", (HttpContext ctx) => EditAsync(ctx, queue));

    private static async Task EditAsync(HttpContext ctx, IJobQueue queue)
    {
        RefuseCrossSite(ctx.Request);
        if (!ctx.Request.HasFormContentType || !(ctx.Request.ContentType ?? "").StartsWith("multipart/form-data", StringComparison.OrdinalIgnoreCase))
            throw new ApiException(415, "Send the edit as multipart/form-data: the file 'image' and the field 'prompt' (as OpenAI's images.edit does).", code: "unsupported_media_type");

        IFormCollection form;
        try
        {
            form = await ctx.Request.ReadFormAsync(new FormOptions
            {
                MultipartBodyLengthLimit = ServerApp.MaxBodyBytes,
                ValueCountLimit = 64,
                ValueLengthLimit = 1 << 20,
                MultipartHeadersLengthLimit = 16 << 10,
            }, ctx.RequestAborted);
        }
        catch (InvalidDataException e)
        {
            throw new ApiException(e.Message.Contains("length limit", StringComparison.OrdinalIgnoreCase) ? 413 : 400,
                "The multipart body could not be read: " + e.Message, code: "bad_multipart");
        }

        var request = ToRequest(form, await ReadImageAsync(form, ctx.RequestAborted));
        var settings = request.ToSettings(GenerationLimits.Server);
        var (withImage, upload) = ImageUpload.Apply(request.Image!, request.ResizeToFit ?? false, settings, queue.Pipeline);
        if (form.TryGetValue("size", out var sizeValue) && sizeValue.ToString() is var size and not "auto"
            && size != $"{withImage.Width}x{withImage.Height}")
            throw new ApiException(400, $"size {size}: an edit's output has the image's size ({withImage.Width}x{withImage.Height}{(request.ResizeToFit == true ? ", resized to fit the model" : "")}); " +
                                        "leave size out (or send \"auto\"), or resize the image first.", "size");
        try { settings = withImage.Resolve(queue.Pipeline); }
        catch (ArgumentException e) { throw ImagesRequest.BadSetting(e, request); }

        var job = await queue.SubmitAsync(settings, upload.Image);
        ctx.Response.Headers["X-Job-Id"] = job.Id;
        await ServerApp.AnswerWhenFinished(ctx, job, request);
    }

    /// <summary>
    /// A browser sends Origin on every cross-origin POST (and Sec-Fetch-Site on current browsers): anything but this
    /// server's own origin is a page on another site submitting a form, refused before the body is read. Clients that
    /// are not browsers send neither header.
    /// </summary>
    internal static void RefuseCrossSite(HttpRequest request)
    {
        string? fetchSite = request.Headers["Sec-Fetch-Site"];
        if (fetchSite is not null && fetchSite is not ("same-origin" or "none"))
            throw new ApiException(403, $"Cross-site request refused (Sec-Fetch-Site: {fetchSite}): /v1/images/edits takes requests from this server's own page or from API clients only.", code: "cross_site");
        string? origin = request.Headers.Origin;
        if (origin is null) return;
        bool same = Uri.TryCreate(origin, UriKind.Absolute, out var o)
                    && string.Equals(o.Scheme, request.Scheme, StringComparison.OrdinalIgnoreCase)
                    && string.Equals(o.IsDefaultPort ? o.Host : $"{o.Host}:{o.Port}", request.Host.Value, StringComparison.OrdinalIgnoreCase);
        if (!same)
            throw new ApiException(403, $"Cross-site request refused (Origin: {origin}): /v1/images/edits takes requests from this server's own page or from API clients only.", code: "cross_site");
    }

    private static async Task<byte[]> ReadImageAsync(IFormCollection form, CancellationToken ct)
    {
        var files = form.Files;
        foreach (var f in files)
        {
            if (f.Name is "image" or "image[]") continue;
            throw f.Name == "mask"
                ? new ApiException(400, "'mask' is not supported: PixArt image-to-image repaints the whole image (use strength to keep more of it).", "mask")
                : new ApiException(400, $"Unknown file field '{f.Name}'; send the source image as 'image'.", f.Name);
        }
        var images = files.Where(f => f.Name is "image" or "image[]").ToList();
        if (images.Count == 0) throw new ApiException(400, "'image' is required: the PNG, JPEG or WebP file to start from, as a multipart file field.", "image");
        if (images.Count > 1) throw new ApiException(400, $"{images.Count} images were sent; PixArt edits one image at a time.", "image");
        var file = images[0];
        if (file.Length > MaxImageBytes)
            throw new ApiException(413, $"'image' has {file.Length:N0} bytes; the limit is {MaxImageBytes:N0}.", "image", "body_too_large");
        if (file.Length == 0) throw new ApiException(400, "'image' is empty; send the PNG, JPEG or WebP file.", "image", "bad_image");
        using var ms = new MemoryStream((int)file.Length);
        await file.CopyToAsync(ms, ct);
        return ms.ToArray();
    }

    /// <summary>The form's text fields as the JSON route's request (the image as base64, decoded by the same code).</summary>
    private static ImagesRequest ToRequest(IFormCollection form, byte[] image)
    {
        foreach (var key in form.Keys)
            if (!TextFields.Contains(key))
                throw new ApiException(400, $"Unknown field '{key}'. Known fields: image, {string.Join(", ", TextFields)}.", key);
        string? S(string k) => form.TryGetValue(k, out var v) ? v.ToString() : null;
        T? Parse<T>(string k, Func<string, T> parse) where T : struct
        {
            if (S(k) is not { } text) return null;
            try { return parse(text.Trim()); }
            catch (Exception e) when (e is FormatException or OverflowException)
            {
                throw new ApiException(400, $"The field '{k}' has the wrong type: '{text}' is not a {typeof(T).Name switch { "Int32" or "Int64" => "whole number", "Double" => "number", "Boolean" => "true or false", var n => n }}.", k);
            }
        }
        return new ImagesRequest
        {
            Prompt = S("prompt"),
            NegativePrompt = S("negative_prompt"),
            N = Parse("n", s => int.Parse(s, CultureInfo.InvariantCulture)),
            Steps = Parse("steps", s => int.Parse(s, CultureInfo.InvariantCulture)),
            Guidance = Parse("guidance", s => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture)),
            Seed = Parse("seed", s => long.Parse(s, CultureInfo.InvariantCulture)),
            Style = S("style"),
            Scheduler = S("scheduler"),
            Strength = Parse("strength", s => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture)),
            ResizeToFit = Parse("resize_to_fit", bool.Parse),
            ResponseFormat = S("response_format"),
            OutputFormat = S("output_format"),
            OutputCompression = Parse("output_compression", s => int.Parse(s, CultureInfo.InvariantCulture)),
            Quality = S("quality"),
            Moderation = S("moderation"),
            Model = S("model"),
            User = S("user"),
            Image = Convert.ToBase64String(image),
        };
    }
}
