using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PixArtSharp.Loading;

/// <summary>
/// Reads diffusers/transformers config files into typed records. Keys are snake_case as in the files;
/// unknown keys are ignored (configs carry many we never read) and missing keys keep the record's default,
/// which is diffusers' default. Python's json writes bare <c>-Infinity</c>, <c>Infinity</c> and <c>NaN</c>
/// literals (e.g. <c>"lambda_min_clipped": -Infinity</c>), which are not JSON: they are quoted before parsing,
/// and <see cref="JsonNumberHandling.AllowNamedFloatingPointLiterals"/> reads the quoted forms into floats.
/// </summary>
internal static class ConfigJson
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
        if (FileKinds.Of(path) == FileKind.Missing)
            throw new ModelNotFoundException($"Config file not found: {path}. Is this a diffusers model folder?");
        return Parse<T>(ModelFiles.ReadAllText(path, "config file"), path);
    }

    /// <summary>Parses config text; <paramref name="source"/> names it in errors.</summary>
    public static T Parse<T>(string json, string source = "config")
    {
        try
        {
            return JsonSerializer.Deserialize<T>(QuoteNonFiniteLiterals(json), Options)
                   ?? throw new WeightFileException($"{source} is empty or null; download the model again.");
        }
        catch (JsonException e)
        {
            throw new ModelConfigException(source, e.Path is { Length: > 2 } jp && jp.StartsWith("$.", StringComparison.Ordinal) ? jp[2..] : null, $"{source} is not a valid config ({e.Message}); download the model again.", e);
        }
    }

    /// <summary>
    /// Rewrites the bare tokens NaN, Infinity and -Infinity outside strings as "NaN", "Infinity", "-Infinity".
    /// Everything else, strings included, is copied unchanged.
    /// </summary>
    public static string QuoteNonFiniteLiterals(string json)
    {
        if (!json.Contains("NaN", StringComparison.Ordinal) && !json.Contains("Infinity", StringComparison.Ordinal))
            return json;
        var sb = new StringBuilder(json.Length + 16);
        bool inString = false;
        for (int i = 0; i < json.Length; i++)
        {
            char c = json[i];
            if (inString)
            {
                sb.Append(c);
                if (c == '\\' && i + 1 < json.Length) sb.Append(json[++i]);
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"') { inString = true; sb.Append(c); continue; }
            string? token = Match(json, i, "-Infinity") ?? Match(json, i, "Infinity") ?? Match(json, i, "NaN");
            if (token != null)
            {
                sb.Append('"').Append(token).Append('"');
                i += token.Length - 1;
                continue;
            }
            sb.Append(c);
        }
        return sb.ToString();
    }

    // A whole token only: "NaNa" or "Infinity2" stay as they are (and fail to parse, as they should).
    private static string? Match(string s, int i, string token) =>
        string.CompareOrdinal(s, i, token, 0, token.Length) == 0
        && (i + token.Length == s.Length || !char.IsLetterOrDigit(s[i + token.Length]))
        && (i == 0 || !char.IsLetterOrDigit(s[i - 1]))
            ? token : null;
}
