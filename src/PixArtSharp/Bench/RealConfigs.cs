
namespace PixArtSharp.Bench;

/// <summary>
/// The configs of PixArt-alpha/PixArt-LCM-XL-2-1024-MS (T5-XXL encoder, PixArt-XL-2 1024-MS transformer, SD VAE,
/// LCM scheduler, tokenizer JSONs, the T5 shard index), embedded in the library: no weights, no download.
/// </summary>
internal static class RealConfigs
{
    public const string Name = "PixArt-LCM-XL-2-1024-MS";
    private const string Prefix = "RealConfigs/" + Name + "/";

    /// <summary>Relative paths (e.g. <c>text_encoder/config.json</c>) of the embedded files.</summary>
    public static IReadOnlyList<string> Files =>
        typeof(RealConfigs).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal))
            .Select(n => n[Prefix.Length..])
            .OrderBy(n => n, StringComparer.Ordinal)
            .ToList();

    public static string ReadText(string relativePath)
    {
        using var s = typeof(RealConfigs).Assembly.GetManifestResourceStream(Prefix + relativePath)
            ?? throw new ArgumentException($"No embedded config '{relativePath}'; have: {string.Join(", ", Files)}.", nameof(relativePath));
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    /// <summary>Writes every embedded file under <paramref name="root"/>, keeping the diffusers layout.</summary>
    public static void ExtractTo(string root)
    {
        foreach (var rel in Files)
        {
            string path = Path.Combine(root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, ReadText(rel));
        }
    }

    /// <summary>
    /// A temporary folder holding the extracted configs (deleted on dispose), for loaders that read config files.
    /// </summary>
    public sealed class TempFolder : IDisposable
    {
        public string Root { get; }

        public TempFolder()
        {
            Root = Path.Combine(Path.GetTempPath(), $"pixart-bench-configs-{Environment.ProcessId}-{Guid.NewGuid():N}");
            ExtractTo(Root);
        }

        public string PathOf(string relativePath) => Path.Combine(Root, relativePath);

        public void Dispose()
        {
            try { Directory.Delete(Root, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }
}
