using System.Text.Json.Nodes;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Imaging;

/// <summary>The model side of a run, recorded beside the settings so a PNG says which weights made it.</summary>
/// <param name="Model">The Hub id, or the full path of a local folder.</param>
/// <param name="ModelRevision">The Hub commit the files came from; null for a local folder.</param>
/// <param name="Variant">The weights variant (e.g. fp16), or null.</param>
/// <param name="DType">fp32, bf16 or fp16.</param>
public sealed record ModelInfo(string Model, string? ModelRevision, string? Variant, string DType)
{
    /// <summary>Components from elsewhere, as the user named them (<c>--text-encoder</c>, <c>--transformer</c>, <c>--vae</c>).</summary>
    public string? TextEncoder { get; init; }
    /// <summary>The transformer given with <c>--transformer</c>, as the user named it.</summary>
    public string? Transformer { get; init; }
    /// <summary>The VAE given with <c>--vae</c>, as the user named it.</summary>
    public string? Vae { get; init; }
    /// <summary>Each LoRA adapter as "name (short sha256) × scale".</summary>
    public IReadOnlyList<string>? Loras { get; init; }
}

/// <summary>
/// The one place that turns a generated image into PNG bytes, so <c>pixart generate</c> and <c>pixart serve</c> give
/// byte-identical files for the same request and seed. Every image carries two text chunks: <c>parameters</c>
/// (A1111 / ComfyUI form, from <see cref="GenerationSettings.ToParametersText"/>) and <c>pixart-settings</c>: the
/// run's <see cref="GenerationSettings"/> JSON plus model, model_revision, variant, dtype, image_index and version
/// (what <c>pixart generate --from-png</c> reads back).
/// </summary>
public static class ImageFiles
{
    /// <summary>The PNG text keyword of the A1111 / ComfyUI parameters line.</summary>
    public const string ParametersKey = "parameters";
    /// <summary>The PNG text keyword of the run's settings JSON (what <c>pixart generate --from-png</c> reads).</summary>
    public const string SettingsKey = "pixart-settings";

    /// <summary>This library's version (major.minor.patch), as the metadata records it.</summary>
    public static string Version => typeof(PixArtAlphaPipeline).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>How the A1111 text names a model: a Hub id as it is, a local folder by its folder name.</summary>
    public static string ModelLabel(string model) =>
        Directory.Exists(model) || File.Exists(model) ? Path.GetFileName(Path.TrimEndingDirectorySeparator(model)) : model;

    /// <summary>The two PNG text chunks of one image: the A1111 parameters line and the settings JSON with the model's side.</summary>
    /// <param name="settings">The resolved settings of the batch the image belongs to.</param>
    /// <param name="model">The weights that made it (recorded beside the settings).</param>
    /// <param name="imageIndex">The image's index in the batch (prompt-major: prompt = index / num_images).</param>
    public static IReadOnlyList<(string Keyword, string Text)> Metadata(GenerationSettings settings, int imageIndex, ModelInfo model)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(model);
        if (settings.Seed is null || settings.Steps is null || settings.Width is null || settings.Height is null)
            throw new ArgumentException("Resolve the settings (GenerationSettings.Resolve) before recording them: seed, steps and size must be known.", nameof(settings));
        if (imageIndex < 0 || imageIndex >= settings.Prompts.Count * settings.NumImages)
            throw new ArgumentOutOfRangeException(nameof(imageIndex), imageIndex, $"The batch has {settings.Prompts.Count * settings.NumImages} images.");
        string parameters = settings.ToParametersText(imageIndex / settings.NumImages, ModelLabel(model.Model), model.ModelRevision, Version);
        var extra = new List<string>();
        if (model.Transformer is not null) extra.Add($"Transformer: {ModelLabel(model.Transformer)}");
        if (model.TextEncoder is not null) extra.Add($"Text encoder: {ModelLabel(model.TextEncoder)}");
        if (model.Vae is not null) extra.Add($"VAE: {ModelLabel(model.Vae)}");
        if (model.Loras is { Count: > 0 } l) extra.Add($"LoRA: {string.Join("; ", l)}");
        if (extra.Count > 0) parameters += ", " + string.Join(", ", extra);
        var json = JsonNode.Parse(settings.ToJson())!.AsObject();
        json["model"] = model.Model;
        if (model.ModelRevision is not null) json["model_revision"] = model.ModelRevision;
        if (model.Variant is not null) json["variant"] = model.Variant;
        json["dtype"] = model.DType;
        if (model.TextEncoder is not null) json["text_encoder"] = model.TextEncoder;
        if (model.Transformer is not null) json["transformer"] = model.Transformer;
        if (model.Vae is not null) json["vae"] = model.Vae;
        if (model.Loras is { Count: > 0 } loras) json["loras"] = new JsonArray(loras.Select(l => (JsonNode)l).ToArray());
        json["image_index"] = imageIndex;
        json["version"] = Version;
        // Control characters (a NUL would fail the write after the whole generation) are shown as visible pictures
        // (PngWriter.SanitizeText), here already so the server's "parameters" field equals the PNG's text; the settings
        // JSON escapes them itself, so --from-png gets back the exact prompt.
        return [(ParametersKey, PngWriter.SanitizeText(parameters)), (SettingsKey, json.ToJsonString(GenerationSettings.JsonOptions))];
    }

    /// <summary>The PNG bytes of image <paramref name="imageIndex"/> of a batch (<paramref name="rgb"/>: height × width × 3).</summary>
    public static byte[] EncodePng(GenerationSettings settings, int imageIndex, ReadOnlySpan<byte> rgb, int width, int height, ModelInfo model) =>
        PngWriter.Encode(rgb, width, height, Metadata(settings, imageIndex, model));
}
