using PixArtSharp.Loading;

namespace PixArtSharp.Hub;

/// <summary>
/// Turns a model argument into a local diffusers folder: an existing folder is used as it is; anything else is
/// taken as a Hub id (<c>org/name</c>) and served from the huggingface_hub cache, downloading what is missing.
/// </summary>
public static class ModelLocator
{
    /// <exception cref="ModelNotFoundException">The argument is neither an existing folder nor a Hub id.</exception>
    /// <exception cref="HubDownloadException">The Hub id could not be downloaded or found in the cache.</exception>
    public static async Task<string> ResolveAsync(string modelArg, string? revision = null, string? variant = null,
        IProgress<DownloadProgress>? progress = null, HubSettings? settings = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelArg);
        ModelFolder.CheckVariant(variant);
        if (Directory.Exists(modelArg)) return Path.GetFullPath(modelArg);
        if (File.Exists(modelArg))
            throw new ModelNotFoundException($"'{modelArg}' is a file; give the model folder (the one holding model_index.json) or a Hugging Face id such as PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");
        if (LooksLikePath(modelArg) || !HubClient.IsValidRepoId(modelArg))
            throw new ModelNotFoundException($"Model folder '{modelArg}' does not exist, and it is not a Hugging Face id (org/name) either. Give an existing diffusers folder or an id such as PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");

        using var client = new HubClient(settings);
        try
        {
            return await client.SnapshotDownloadAsync(modelArg, revision, variant, progress, ct).ConfigureAwait(false);
        }
        catch (HubDownloadException e) when (e.Kind is HubErrorKind.NotFound && e.File == null)
        {
            throw new HubDownloadException(e.Kind, e.RepoId, null, $"{e.Message} ('{modelArg}' is not an existing local folder either.)", e);
        }
    }

    /// <summary>Blocking form of <see cref="ResolveAsync"/> for command-line use.</summary>
    public static string Resolve(string modelArg, string? revision = null, string? variant = null,
        IProgress<DownloadProgress>? progress = null, HubSettings? settings = null, CancellationToken ct = default) =>
        ResolveAsync(modelArg, revision, variant, progress, settings, ct).GetAwaiter().GetResult();

    // Things people type for folders, never for a Hub id: absolute or relative path syntax, drive letters, home.
    private static bool LooksLikePath(string arg) =>
        arg.StartsWith('.') || arg.StartsWith('/') || arg.StartsWith('~') || arg.Contains('\\') || arg.Contains(':')
        || arg.Count(c => c == '/') != 1;
}
