using System.Reflection;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Imaging;

/// <summary>
/// The one place that turns a generated image into PNG bytes, so <c>pixart generate</c> and <c>pixart serve</c> give
/// byte-identical files for the same request and seed: 8-bit RGB, a <c>parameters</c> tEXt chunk in the
/// A1111/ComfyUI format (what image browsers read), then the resolved settings as JSON (what <c>--from-png</c> reads).
/// </summary>
public static class ImageFiles
{
    /// <summary>The A1111 / ComfyUI keyword: its text is the prompt, "Negative prompt: …" and "Key: value" pairs.</summary>
    public const string ParametersKeyword = "parameters";
    /// <summary>The keyword of the exact <see cref="GenerationSettings"/> JSON.</summary>
    public const string SettingsKeyword = "pixartsharp";

    /// <summary>PixArtSharp's version as recorded in images ("0.1.0"), without the source revision suffix.</summary>
    public static string Version { get; } =
        (typeof(ImageFiles).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
         ?? typeof(ImageFiles).Assembly.GetName().Version?.ToString() ?? "0").Split('+')[0];

    /// <summary>
    /// How a model is named in image metadata: a Hub id as given; a local folder by its last path component only,
    /// so images (and server answers) never reveal the machine's directory layout.
    /// </summary>
    public static string ModelLabel(string modelArg)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelArg);
        string trimmed = modelArg.TrimEnd('/', '\\');
        return Directory.Exists(modelArg) || trimmed.StartsWith('/') || trimmed.StartsWith('.') || trimmed.Contains('\\')
            ? Path.GetFileName(trimmed) is { Length: > 0 } name ? name : trimmed
            : trimmed;
    }

    /// <summary>The text chunks of image <paramref name="promptIndex"/> of these resolved settings, in file order.</summary>
    public static IReadOnlyList<(string Keyword, string Text)> Metadata(GenerationSettings resolved, int promptIndex, string model, string? modelRevision = null)
    {
        ArgumentNullException.ThrowIfNull(resolved);
        if (resolved.Seed is null || resolved.Steps is null || resolved.Width is null || resolved.Height is null)
            throw new ArgumentException("Resolve the settings (GenerationSettings.Resolve) before recording them: seed, steps and size must be known.", nameof(resolved));
        if (promptIndex < 0 || promptIndex >= resolved.Prompts.Count)
            throw new ArgumentOutOfRangeException(nameof(promptIndex), promptIndex, $"There are {resolved.Prompts.Count} prompts.");
        return
        [
            (ParametersKeyword, resolved.ToParametersText(promptIndex, model, modelRevision, Version)),
            (SettingsKeyword, resolved.ToJson()),
        ];
    }

    /// <summary>PNG bytes for one generated image (<paramref name="rgb"/>: height × width × 3, row-major).</summary>
    public static byte[] EncodePng(GenerationSettings resolved, int promptIndex, ReadOnlySpan<byte> rgb, int width, int height,
        string model, string? modelRevision = null) =>
        PngWriter.Encode(rgb, width, height, Metadata(resolved, promptIndex, model, modelRevision));
}
