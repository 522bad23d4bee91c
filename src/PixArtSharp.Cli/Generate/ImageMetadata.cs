using System.Text.Json;
using System.Text.Json.Nodes;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Generate;

/// <summary>The model side of a run, recorded beside the settings so <c>--from-png</c> loads the same weights.</summary>
/// <param name="Model">The Hub id, or the full path of a local folder.</param>
/// <param name="ModelRevision">The Hub commit the files came from; null for a local folder.</param>
/// <param name="DType">fp32, bf16 or fp16.</param>
public sealed record ModelInfo(string Model, string? ModelRevision, string? Variant, string DType);

/// <summary>
/// The two text chunks every image carries: <c>parameters</c> (A1111 / ComfyUI form, from
/// <see cref="GenerationSettings.ToParametersText"/>) and <c>pixart-settings</c>: the run's
/// <see cref="GenerationSettings"/> JSON plus model, model_revision, variant, dtype, image_index and version.
/// </summary>
public static class ImageMetadata
{
    public const string ParametersKey = "parameters";
    public const string SettingsKey = "pixart-settings";

    public static string Version => typeof(PixArtAlphaPipeline).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <param name="settings">The resolved settings of the batch the image belongs to.</param>
    /// <param name="imageIndex">The image's index in the batch (prompt-major: prompt = index / num_images).</param>
    public static IReadOnlyList<(string Keyword, string Text)> Chunks(GenerationSettings settings, int imageIndex, ModelInfo model)
    {
        string modelLabel = Directory.Exists(model.Model) ? Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Model)) : model.Model;
        string parameters = settings.ToParametersText(imageIndex / settings.NumImages, modelLabel, model.ModelRevision, Version);
        var json = JsonNode.Parse(settings.ToJson())!.AsObject();
        json["model"] = model.Model;
        if (model.ModelRevision is not null) json["model_revision"] = model.ModelRevision;
        if (model.Variant is not null) json["variant"] = model.Variant;
        json["dtype"] = model.DType;
        json["image_index"] = imageIndex;
        json["version"] = Version;
        return [(ParametersKey, parameters), (SettingsKey, json.ToJsonString(GenerationSettings.JsonOptions))];
    }

    /// <summary>Reads what <see cref="Chunks"/> wrote. A PNG without it (or not a PNG) is a <see cref="UsageException"/>.</summary>
    public static (GenerationSettings Settings, ModelInfo Model, int ImageIndex) Read(string pngPath)
    {
        if (!File.Exists(pngPath)) throw new UsageException($"--from-png: file not found: {pngPath}.");
        IReadOnlyList<(string Keyword, string Text)> chunks;
        try { chunks = PngReader.ReadTextChunks(pngPath); }
        catch (InvalidDataException e) { throw new UsageException($"--from-png: {e.Message}"); }
        var text = chunks.FirstOrDefault(c => c.Keyword == SettingsKey).Text
            ?? throw new UsageException($"--from-png: {pngPath} has no '{SettingsKey}' metadata, so it was not made by pixart generate (or its metadata was stripped).");
        try
        {
            var settings = GenerationSettings.FromJson(text);
            var node = JsonNode.Parse(text)!.AsObject();
            var model = new ModelInfo(
                (string?)node["model"] ?? GenerateCommand.DefaultModel,
                (string?)node["model_revision"],
                (string?)node["variant"],
                (string?)node["dtype"] ?? "fp32");
            return (settings, model, (int?)node["image_index"] ?? 0);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new UsageException($"--from-png: the '{SettingsKey}' metadata of {pngPath} is not valid ({e.Message}).");
        }
    }
}
