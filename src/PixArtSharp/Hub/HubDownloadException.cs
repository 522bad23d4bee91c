namespace PixArtSharp.Hub;

/// <summary>Why a Hub download failed; the message says what to do.</summary>
public enum HubErrorKind
{
    /// <summary>401/403: the repo is gated or private, or the token was refused.</summary>
    Unauthorized,
    /// <summary>404: no such repo, revision or file.</summary>
    NotFound,
    /// <summary>The Hub could not be reached, or the connection broke and retries ran out.</summary>
    Network,
    /// <summary>HF_HUB_OFFLINE is set and the model is not (fully) in the cache.</summary>
    Offline,
    /// <summary>The downloaded bytes do not match the size or sha256 the Hub announced; the blob was discarded.</summary>
    Checksum,
    /// <summary>The cache could not be written (disk full, permissions, path is a file...).</summary>
    Disk,
    /// <summary>The server answered something the Hub protocol does not allow (no commit header, no ETag, 5xx...).</summary>
    Server,
    /// <summary>The repo is there but not usable by PixArtSharp (not a diffusers pipeline, .bin weights only...).</summary>
    Unsupported,
}

/// <summary>
/// A Hugging Face Hub download or cache look-up that failed. The message names the repo (and file) and
/// says how to fix it; <see cref="Kind"/> lets a caller react (e.g. ask for a token on <see cref="HubErrorKind.Unauthorized"/>).
/// Whatever the failure, nothing corrupt is left under <c>blobs/</c> or <c>snapshots/</c>: at most a
/// <c>blobs/&lt;etag&gt;.incomplete</c> file that the next download resumes.
/// </summary>
public sealed class HubDownloadException(HubErrorKind kind, string repoId, string? file, string message, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>What kind of failure it was.</summary>
    public HubErrorKind Kind { get; } = kind;
    /// <summary>The Hub repo the download was for (e.g. <c>PixArt-alpha/PixArt-LCM-XL-2-1024-MS</c>).</summary>
    public string RepoId { get; } = repoId;
    /// <summary>The file inside the repo (e.g. <c>transformer/config.json</c>), when the error concerns one.</summary>
    public string? File { get; } = file;
}
