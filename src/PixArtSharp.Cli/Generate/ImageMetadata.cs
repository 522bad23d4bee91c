using System.Text.Json;
using System.Text.Json.Nodes;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Generate;

/// <summary>
/// Reads back the two text chunks every image carries (written by <see cref="ImageFiles.EncodePng"/>): <c>parameters</c> (A1111 / ComfyUI form, from
/// <see cref="GenerationSettings.ToParametersText"/>) and <c>pixart-settings</c>: the run's
/// <see cref="GenerationSettings"/> JSON plus model, model_revision, variant, dtype, image_index and version.
/// </summary>
public static class ImageMetadata
{
    public const string ParametersKey = ImageFiles.ParametersKey;
    public const string SettingsKey = ImageFiles.SettingsKey;

    public static string Version => ImageFiles.Version;

    /// <summary>The chunks of image <paramref name="imageIndex"/>: see <see cref="ImageFiles.Metadata"/> (shared with pixart serve).</summary>
    public static IReadOnlyList<(string Keyword, string Text)> Chunks(GenerationSettings settings, int imageIndex, ModelInfo model) =>
        ImageFiles.Metadata(settings, imageIndex, model);

    /// <summary>Reads what <see cref="Chunks"/> wrote. A PNG without it (or not a PNG) is a <see cref="UsageException"/>.</summary>
    public static (GenerationSettings Settings, ModelInfo Model, int ImageIndex) Read(string pngPath)
    {
        // A regular file within the size limits, its text chunks bounded, before PngReader reads it whole.
        InputFiles.CheckFromPng(pngPath);
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
                (string?)node["dtype"] ?? "fp32")
            {
                Loras = node["loras"] is JsonArray l ? l.Select(x => (string?)x ?? "").ToList() : null,
            };
            return (settings, model, (int?)node["image_index"] ?? 0);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new UsageException($"--from-png: the '{SettingsKey}' metadata of {pngPath} is not valid ({e.Message}).");
        }
    }
}
