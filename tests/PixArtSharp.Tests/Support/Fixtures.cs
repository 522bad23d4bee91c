namespace PixArtSharp.Tests.Support;

/// <summary>
/// Finds the shared, read-only ground truth (../shared/fixtures beside the repository root).
/// PIXART_FIXTURES overrides the location. A missing folder fails loudly: a test that silently skips
/// would report green without checking anything.
/// </summary>
public static class Fixtures
{
    private static readonly Lazy<string> _root = new(Locate);

    public static string Root => _root.Value;

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root, .. parts]);

    private static string Locate()
    {
        var env = Environment.GetEnvironmentVariable("PIXART_FIXTURES");
        if (!string.IsNullOrEmpty(env))
        {
            if (!File.Exists(System.IO.Path.Combine(env, "README.md")))
                throw new InvalidOperationException($"PIXART_FIXTURES is set to '{env}', but that folder has no README.md: point it at the shared/fixtures folder.");
            return env;
        }
        // Walk up from the test binary to the repository root (the folder holding PixArtSharp.slnx),
        // then look for shared/fixtures beside it.
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (!File.Exists(System.IO.Path.Combine(dir.FullName, "PixArtSharp.slnx"))) continue;
            var candidate = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir.FullName, "..", "shared", "fixtures"));
            if (File.Exists(System.IO.Path.Combine(candidate, "README.md"))) return candidate;
            throw new InvalidOperationException(
                $"The shared fixtures were not found at '{candidate}'. Clone the repository beside the 'shared' folder " +
                "(…/main and …/shared), or set PIXART_FIXTURES to the shared/fixtures folder.");
        }
        throw new InvalidOperationException("Could not find the repository root (PixArtSharp.slnx) above " + AppContext.BaseDirectory + "; set PIXART_FIXTURES.");
    }
}
