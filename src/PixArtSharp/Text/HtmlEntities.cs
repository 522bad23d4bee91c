using System.Text.Json;

namespace PixArtSharp.Text;

/// <summary>
/// The HTML named character references the caption cleaner needs, read once from the embedded
/// <c>HtmlEntities.json</c> (data, not code): <c>Html5</c> is CPython's <c>html.entities.html5</c> (the WHATWG names,
/// some without the trailing semicolon, to their replacement text); <c>FtfyUppercase</c> is ftfy 6.x's
/// <c>chardata._build_html_entities</c> addition (upper-cased lowercase names, mapped with <c>str.upper</c>).
/// </summary>
internal static class HtmlEntities
{
    private static readonly Lazy<(IReadOnlyDictionary<string, string> Html5, IReadOnlyDictionary<string, string> FtfyUppercase)> Tables = new(Load);

    /// <summary>html.entities.html5: names (some without the trailing semicolon) to replacement text.</summary>
    public static IReadOnlyDictionary<string, string> Html5 => Tables.Value.Html5;

    /// <summary>ftfy's upper-case entity names ("&amp;EACUTE;" → "É").</summary>
    public static IReadOnlyDictionary<string, string> FtfyUppercase => Tables.Value.FtfyUppercase;

    private static (IReadOnlyDictionary<string, string>, IReadOnlyDictionary<string, string>) Load()
    {
        using var stream = typeof(HtmlEntities).Assembly.GetManifestResourceStream("PixArtSharp.Text.HtmlEntities.json")
            ?? throw new InvalidOperationException("The embedded resource HtmlEntities.json is missing from the PixArtSharp assembly.");
        var tables = JsonSerializer.Deserialize<Dictionary<string, Dictionary<string, string>>>(stream)!;
        return (new Dictionary<string, string>(tables["Html5"], StringComparer.Ordinal),
                new Dictionary<string, string>(tables["FtfyUppercase"], StringComparer.Ordinal));
    }
}
