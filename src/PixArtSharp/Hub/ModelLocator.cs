using PixArtSharp.Loading;

namespace PixArtSharp.Hub;

/// <summary>
/// Turns a model argument into a local diffusers folder: an existing folder is used as it is; anything else is
/// taken as a Hub id (<c>org/name</c>) and served from the huggingface_hub cache, downloading what is missing.
/// </summary>
public static class ModelLocator
{
    /// <summary>
    /// The local diffusers folder for <paramref name="modelArg"/> (full path): the folder itself, or the Hub id's
    /// snapshot in the Hugging Face cache, downloading only the files a pipeline needs (configs, tokenizer, the
    /// weights of <paramref name="variant"/> or the default ones).
    /// </summary>
    /// <param name="modelArg">A diffusers folder, or a Hub id such as <c>PixArt-alpha/PixArt-LCM-XL-2-1024-MS</c>.</param>
    /// <param name="revision">A branch, tag or commit of the Hub repo; null = main.</param>
    /// <param name="variant">A weights variant such as "fp16"; null = the default weights.</param>
    /// <param name="progress">Per-file download progress; null = none.</param>
    /// <param name="settings">Endpoint, cache, token, offline; null = from the environment (as huggingface_hub reads it).</param>
    /// <param name="ct">Cancels the download (what is on disk is resumed next time).</param>
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

    /// <summary>
    /// Turns a component argument (<c>--transformer</c>, <c>--vae</c>, <c>--text-encoder</c>) into a local path: an
    /// existing folder or file as it is; a Hub id <c>org/name</c> (its <paramref name="component"/>/ sub-folder when the
    /// repo is a pipeline, else its top level, as <c>madebyollin/taesd</c>); <c>org/name/sub/folder</c> for another
    /// sub-folder (diffusers' <c>subfolder=</c>); or <c>org/name/path/file.gguf</c> for one file. Only the config and
    /// the weights of the requested <paramref name="variant"/> (or the default ones) are fetched.
    /// </summary>
    public static async Task<string> ResolveComponentAsync(string arg, string component, string? revision = null, string? variant = null,
        IProgress<DownloadProgress>? progress = null, HubSettings? settings = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(arg);
        ArgumentException.ThrowIfNullOrWhiteSpace(component);
        if (Directory.Exists(arg) || File.Exists(arg)) return Path.GetFullPath(arg);
        var parts = arg.Split('/');
        if (arg.StartsWith('.') || arg.StartsWith('/') || arg.StartsWith('~') || arg.Contains('\\') || parts.Length < 2 ||
            !HubClient.IsValidRepoId(parts[0] + "/" + parts[1]) || parts.Skip(2).Any(p => p is "" or "." or ".."))
            throw new ModelNotFoundException($"--{component.Replace('_', '-')} '{arg}' is neither an existing folder or file nor a Hugging Face id " +
                "(org/name, org/name/subfolder or org/name/path/file.gguf).");
        string repo = parts[0] + "/" + parts[1];
        string sub = string.Join('/', parts.Skip(2));
        using var client = new HubClient(settings);
        if (sub.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            return await client.DownloadFileAsync(repo, sub, revision, progress, ct).ConfigureAwait(false);
        var info = await client.GetRepoInfoAsync(repo, revision, ct).ConfigureAwait(false);
        if (sub.Length == 0 && info.Files.Contains(PipelineFiles.ModelIndex)) sub = component;
        string prefix = sub.Length == 0 ? "" : sub + "/";
        if (!info.Files.Contains(prefix + "config.json"))
            throw new HubDownloadException(HubErrorKind.NotFound, repo, prefix + "config.json",
                $"{repo} has no {prefix}config.json, so '{arg}' is not a {component} in the diffusers layout. Name its sub-folder (org/name/subfolder).");
        string? folder = null;
        foreach (var file in ComponentFiles(info.Files, prefix, variant))
        {
            string local = await client.DownloadFileAsync(repo, file, info.Sha, progress, ct).ConfigureAwait(false);
            folder ??= Path.GetDirectoryName(local);
            if (!PipelineFiles.IsShardIndex(file)) continue;
            foreach (var shard in PipelineFiles.ShardsOf(file, await File.ReadAllBytesAsync(local, ct).ConfigureAwait(false), repo))
                await client.DownloadFileAsync(repo, shard, info.Sha, progress, ct).ConfigureAwait(false);
        }
        return folder!;
    }

    /// <summary>config.json and one set of safetensors weights directly under <paramref name="prefix"/>: the variant's when there are any, else the default ones.</summary>
    internal static IReadOnlyList<string> ComponentFiles(IReadOnlySet<string> repoFiles, string prefix, string? variant)
    {
        var here = repoFiles.Where(f => f.StartsWith(prefix, StringComparison.Ordinal) && !f[prefix.Length..].Contains('/')).Select(f => f[prefix.Length..]).ToList();
        bool IsWeights(string name, string? v)
        {
            foreach (var stem in new[] { "diffusion_pytorch_model", "model" })
            {
                string s = v is null ? stem : $"{stem}.{v}";
                if (name == $"{s}.safetensors" || name == (v is null ? $"{stem}.safetensors.index.json" : $"{stem}.safetensors.index.{v}.json")) return true;
            }
            return false;
        }
        var weights = !string.IsNullOrEmpty(variant) && here.Any(n => IsWeights(n, variant))
            ? here.Where(n => IsWeights(n, variant)).ToList()
            : here.Where(n => IsWeights(n, null)).ToList();
        return [prefix + "config.json", .. weights.Select(n => prefix + n)];
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
