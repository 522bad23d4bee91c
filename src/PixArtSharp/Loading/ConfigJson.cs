using System.Text.Json;
using System.Text.Json.Serialization;

namespace PixArtSharp.Loading;

/// <summary>
/// Reads diffusers/transformers config files into typed records. Keys are snake_case as in the files;
/// unknown keys are ignored (configs carry many we never read) and missing keys keep the record's default,
/// which is diffusers' default. Python's json writes -Infinity and NaN literals, which must be accepted.
/// </summary>
public static class ConfigJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals | JsonNumberHandling.AllowReadingFromString,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        WriteIndented = true,
    };

    public static T Load<T>(string path)
    {
        if (!File.Exists(path))
            throw new ModelNotFoundException($"Config file not found: {path}. Is this a diffusers model folder?");
        try
        {
            using var fs = File.OpenRead(path);
            return JsonSerializer.Deserialize<T>(fs, Options)
                   ?? throw new WeightFileException($"{path} is empty or null; download the model again.");
        }
        catch (JsonException e)
        {
            throw new WeightFileException($"{path} is not a valid config ({e.Message}); download the model again.", e);
        }
    }
}
