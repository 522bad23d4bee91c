using System.Text.RegularExpressions;
using PixArtSharp.Loading;

namespace PixArtSharp.Hub;

/// <summary>
/// The huggingface_hub cache layout (v0.23 <c>file_download.py</c>), shared with Python so that each reuses what the
/// other downloaded:
/// <code>
/// {root}/models--{org}--{name}/
///     blobs/{etag}                       file contents; etag = sha256 for LFS files, git blob sha1 otherwise
///     blobs/{etag}.incomplete            a download in progress or interrupted (resumed with a Range request)
///     refs/{revision}                    the commit hash a branch or tag pointed at (no newline)
///     snapshots/{commit}/{path}          relative symlink to ../../blobs/{etag} (one more ../ per folder level)
/// {root}/.locks/models--{org}--{name}/{etag}.lock    per-blob lock (flock, like Python's filelock)
/// </code>
/// </summary>
internal sealed partial class HubCache(string root)
{
    public string Root { get; } = Path.GetFullPath(root);

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitHashRegex();

    /// <summary>A full 40-hex commit hash (revisions that are hashes need no ref).</summary>
    public static bool IsCommitHash(string revision) => CommitHashRegex().IsMatch(revision);

    /// <summary><c>models--org--name</c> for <c>org/name</c>.</summary>
    public static string RepoFolderName(string repoId) => "models--" + repoId.Replace("/", "--");

    public string RepoFolder(string repoId) => Path.Combine(Root, RepoFolderName(repoId));
    public string BlobPath(string repoId, string etag) => Path.Combine(RepoFolder(repoId), "blobs", etag);
    public string SnapshotFolder(string repoId, string commit) => Path.Combine(RepoFolder(repoId), "snapshots", commit);
    public string LockPath(string repoId, string etag) => Path.Combine(Root, ".locks", RepoFolderName(repoId), etag + ".lock");

    /// <summary>The pointer <c>snapshots/{commit}/{path}</c>; <paramref name="file"/> uses '/' separators.</summary>
    public string PointerPath(string repoId, string commit, string file)
    {
        string snapshot = SnapshotFolder(repoId, commit);
        string pointer = Path.GetFullPath(Path.Combine([snapshot, .. file.Split('/')]));
        // Same guard as huggingface_hub's _get_pointer_path: a repo path must not climb out of its snapshot.
        if (!pointer.StartsWith(snapshot + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"Invalid file path '{file}': it points outside the snapshot folder.", nameof(file));
        return pointer;
    }

    /// <summary>The commit a revision stands for in the cache: the revision itself if it is a hash, else <c>refs/{revision}</c>.</summary>
    public string? ResolveCommit(string repoId, string revision)
    {
        if (IsCommitHash(revision)) return revision;
        string refPath = Path.Combine(RepoFolder(repoId), "refs", revision);
        try
        {
            if (!File.Exists(refPath)) return null;
            string commit = File.ReadAllText(refPath).Trim();
            return IsCommitHash(commit) ? commit : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>Records that <paramref name="revision"/> (a branch or tag) points at <paramref name="commit"/>; written atomically, only when it changed.</summary>
    public void WriteRef(string repoId, string revision, string commit)
    {
        if (revision == commit) return;
        string refPath = Path.Combine(RepoFolder(repoId), "refs", revision);
        if (ResolveCommit(repoId, revision) == commit) return;  // unchanged: don't write (read-only caches stay usable)
        Directory.CreateDirectory(Path.GetDirectoryName(refPath)!);
        string tmp = $"{refPath}.{Guid.NewGuid():N}.tmp";
        File.WriteAllText(tmp, commit);
        File.Move(tmp, refPath, overwrite: true);
    }

    /// <summary>
    /// Python's <c>try_to_load_from_cache</c>: the cached path of one file at a revision (branch, tag or hash), or null.
    /// </summary>
    public string? TryGetFile(string repoId, string file, string? revision = null)
    {
        string? commit = ResolveCommit(repoId, revision ?? "main");
        if (commit == null) return null;
        string pointer = PointerPath(repoId, commit, file);
        return File.Exists(pointer) ? pointer : null;  // File.Exists follows the symlink: a dangling link is "not cached"
    }

    /// <summary>
    /// The snapshot folder of a pipeline at a revision if it holds everything PixArtSharp needs (model_index.json,
    /// each component's config, tokenizer and weights of the variant, every shard); otherwise null.
    /// </summary>
    public string? TryResolveSnapshot(string repoId, string? revision = null, string? variant = null)
    {
        ModelFolder.CheckVariant(variant);
        string? commit = ResolveCommit(repoId, revision ?? "main");
        if (commit == null) return null;
        string snapshot = SnapshotFolder(repoId, commit);
        string index = Path.Combine(snapshot, PipelineFiles.ModelIndex);
        if (!File.Exists(index)) return null;
        try
        {
            var present = Directory.EnumerateFiles(snapshot, "*", SearchOption.AllDirectories)
                .Where(File.Exists)  // skips dangling links
                .Select(f => Path.GetRelativePath(snapshot, f).Replace(Path.DirectorySeparatorChar, '/'))
                .ToHashSet(StringComparer.Ordinal);
            var components = PipelineFiles.Components(File.ReadAllBytes(index), repoId);
            foreach (var f in PipelineFiles.Select(present, components, variant, repoId))
            {
                if (!PipelineFiles.IsShardIndex(f)) continue;
                foreach (var shard in PipelineFiles.ShardsOf(f, File.ReadAllBytes(Path.Combine(snapshot, f)), repoId))
                    if (!present.Contains(shard)) return null;
            }
            return snapshot;
        }
        catch (HubDownloadException) { return null; }  // something needed is missing: not complete
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>
    /// For offline use: the complete cached snapshot of <paramref name="repoId"/> at <paramref name="revision"/>
    /// (default main) in <paramref name="cacheDir"/> (default: from the environment), or null.
    /// </summary>
    public static string? TryResolveLocal(string repoId, string? revision = null, string? variant = null, string? cacheDir = null) =>
        new HubCache(cacheDir ?? HubSettings.FromEnvironment().CacheDir).TryResolveSnapshot(repoId, revision, variant);

    /// <summary>
    /// Points <paramref name="pointerPath"/> at <paramref name="blobPath"/> with a relative symlink, as Python's
    /// <c>_create_symlink</c> does. The link is made under a temporary name and renamed over the destination, so a
    /// concurrent process never sees a missing or half-made pointer. Where symlinks are not allowed (Windows without
    /// developer mode) the blob is copied instead, like huggingface_hub's fallback.
    /// </summary>
    public static void LinkPointer(string blobPath, string pointerPath)
    {
        string dir = Path.GetDirectoryName(pointerPath)!;
        Directory.CreateDirectory(dir);
        string relative = Path.GetRelativePath(dir, blobPath);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(pointerPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.CreateSymbolicLink(tmp, relative);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            File.Copy(blobPath, tmp, overwrite: true);
        }
        try
        {
            File.Move(tmp, pointerPath, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }
}
