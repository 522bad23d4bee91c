using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using PixArtSharp.Loading;

namespace PixArtSharp.Hub;

/// <summary>What <c>GET /api/models/{repo}/revision/{revision}</c> says: the commit and the repo's file paths.</summary>
internal sealed record RepoInfo(string RepoId, string Sha, IReadOnlySet<string> Files);

/// <summary>What a HEAD on <c>/{repo}/resolve/{revision}/{file}</c> says (huggingface_hub's <c>HfFileMetadata</c>).</summary>
internal sealed record HubFileMetadata(string Commit, string Etag, long Size, Uri Location)
{
    /// <summary>LFS files have a sha256 etag (64 hex); regular git files a 40-hex blob sha1.</summary>
    public bool IsLfs => Etag.Length == 64 && Etag.All(char.IsAsciiHexDigitLower);
}

/// <summary>
/// Downloads diffusers pipelines from the Hugging Face Hub into the huggingface_hub cache, following
/// huggingface_hub v0.23's protocol (<c>hf_hub_download</c>, <c>snapshot_download</c>): one API call for the commit
/// and file list, then per file a HEAD on <c>resolve/{commit}/{file}</c> (redirects to the CDN are not followed:
/// they give the download location), and a GET into <c>blobs/{etag}.incomplete</c> under a per-blob lock, resumed
/// with <c>Range</c> after a broken connection, checked for size and (LFS files) sha256, then moved into place
/// and linked from <c>snapshots/{commit}/</c>. Files already linked in the snapshot are not fetched again.
/// </summary>
internal sealed partial class HubClient : IDisposable
{
    private readonly HttpClient _http;

    public HubSettings Settings { get; }
    public HubCache Cache { get; }
    /// <summary>How many times a broken file transfer is resumed within one call (huggingface_hub: 5).</summary>
    public int MaxRetries { get; init; } = 5;
    /// <summary>Wait before the first resume; doubled each time, at most 8 s.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(1);

    /// <param name="settings">Endpoint, cache, token, offline flag; default <see cref="HubSettings.FromEnvironment()"/>.</param>
    /// <param name="handler">For tests or proxies. It must not follow redirects itself: the client reads them.</param>
    public HubClient(HubSettings? settings = null, HttpMessageHandler? handler = null)
    {
        Settings = settings ?? HubSettings.FromEnvironment();
        Cache = new HubCache(Settings.CacheDir);
        handler ??= new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            ConnectTimeout = Settings.RequestTimeout,
            UseCookies = false,
        };
        _http = new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd($"PixArtSharp/{typeof(HubClient).Assembly.GetName().Version?.ToString(3) ?? "0"}");
    }

    public void Dispose() => _http.Dispose();

    // huggingface_hub validate_repo_id: [\w.-] parts, at most one '/', no '--' or '..', word characters at both ends.
    [GeneratedRegex(@"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$", RegexOptions.ECMAScript)]
    private static partial Regex RepoIdRegex();

    /// <summary>True for a syntactically valid Hub repo id (<c>name</c> or <c>org/name</c>, as huggingface_hub accepts).</summary>
    public static bool IsValidRepoId(string repoId) =>
        repoId.Length is > 0 and <= 96 && RepoIdRegex().IsMatch(repoId) && !repoId.Contains("--") && !repoId.Contains("..");

    // ───────────────────────────── snapshot ─────────────────────────────

    /// <summary>
    /// Makes sure the files PixArtSharp needs from the pipeline <paramref name="repoId"/> at <paramref name="revision"/>
    /// (default main) are in the cache, and returns the snapshot folder: a normal diffusers folder (model_index.json,
    /// transformer/, vae/, ...) whose files are symlinks into blobs/. Only the chosen weight
    /// <paramref name="variant"/> is fetched (components without it get their default weights, as in diffusers).
    /// With <see cref="HubSettings.Offline"/>, or when the Hub cannot be reached, a complete cached snapshot is used.
    /// </summary>
    /// <exception cref="HubDownloadException">Any failure, with a message naming the repo/file and the fix.</exception>
    public async Task<string> SnapshotDownloadAsync(string repoId, string? revision = null, string? variant = null,
        IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        CheckArguments(repoId, ref revision);
        ModelFolder.CheckVariant(variant);
        if (Settings.Offline)
            return Cache.TryResolveSnapshot(repoId, revision, variant)
                ?? throw new HubDownloadException(HubErrorKind.Offline, repoId, null,
                    $"{Describe(repoId, revision, variant)} is not in the Hugging Face cache at {Cache.Root}, and HF_HUB_OFFLINE is set, " +
                    "so it cannot be downloaded. Unset HF_HUB_OFFLINE to download it, or set HF_HUB_CACHE to a cache that has it.");

        RepoInfo info;
        try
        {
            info = await GetRepoInfoAsync(repoId, revision, ct).ConfigureAwait(false);
        }
        catch (HubDownloadException e) when (e.Kind is HubErrorKind.Network or HubErrorKind.Server or HubErrorKind.Unauthorized)
        {
            // As snapshot_download: when the Hub can't be asked (no network, Hub down, token missing), a complete
            // cached snapshot of that revision is good enough.
            if (Cache.TryResolveSnapshot(repoId, revision, variant) is { } cached) return cached;
            throw new HubDownloadException(e.Kind, repoId, null, $"{e.Message} {Describe(repoId, revision, variant)} is not in the cache at {Cache.Root} either.", e);
        }

        return await WithDiskErrors(repoId, null, async () =>
        {
            Cache.WriteRef(repoId, revision, info.Sha);
            if (!info.Files.Contains(PipelineFiles.ModelIndex))
                throw new HubDownloadException(HubErrorKind.Unsupported, repoId, PipelineFiles.ModelIndex,
                    $"{repoId} has no model_index.json at revision {revision}, so it is not a diffusers pipeline. PixArtSharp needs a " +
                    "diffusers PixArt repo such as PixArt-alpha/PixArt-LCM-XL-2-1024-MS.");

            string index = await DownloadFileCoreAsync(repoId, PipelineFiles.ModelIndex, info.Sha, progress, ct).ConfigureAwait(false);
            var components = PipelineFiles.Components(await File.ReadAllBytesAsync(index, ct).ConfigureAwait(false), repoId);
            foreach (var file in PipelineFiles.Select(info.Files, components, variant, repoId))
            {
                string local = await DownloadFileCoreAsync(repoId, file, info.Sha, progress, ct).ConfigureAwait(false);
                if (!PipelineFiles.IsShardIndex(file)) continue;
                foreach (var shard in PipelineFiles.ShardsOf(file, await File.ReadAllBytesAsync(local, ct).ConfigureAwait(false), repoId))
                {
                    if (!info.Files.Contains(shard))
                        throw new HubDownloadException(HubErrorKind.Unsupported, repoId, shard,
                            $"{repoId}: {file} lists the shard {shard}, which is not in the repo at {info.Sha}; the repo is incomplete.");
                    await DownloadFileCoreAsync(repoId, shard, info.Sha, progress, ct).ConfigureAwait(false);
                }
            }
            return Cache.SnapshotFolder(repoId, info.Sha);
        }).ConfigureAwait(false);
    }

    // ───────────────────────────── one file ─────────────────────────────

    /// <summary>
    /// <c>hf_hub_download</c>: makes sure one repo file is in the cache and returns its path under
    /// <c>snapshots/{commit}/</c>. A branch or tag <paramref name="revision"/> is recorded in <c>refs/</c>.
    /// </summary>
    public async Task<string> DownloadFileAsync(string repoId, string file, string? revision = null,
        IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        CheckArguments(repoId, ref revision);
        if (file.Length == 0 || file.Contains('\\') || file.Split('/').Any(p => p is "" or "." or ".."))
            throw new ArgumentException($"'{file}' is not a repo file path (use '/' separators, no '.' or '..' parts).", nameof(file));
        if (Settings.Offline)
            return Cache.TryGetFile(repoId, file, revision)
                ?? throw new HubDownloadException(HubErrorKind.Offline, repoId, file,
                    $"{file} of {repoId} (revision {revision}) is not in the Hugging Face cache at {Cache.Root}, and HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE to download it.");
        return await WithDiskErrors(repoId, file, () => DownloadFileCoreAsync(repoId, file, revision, progress, ct)).ConfigureAwait(false);
    }

    private async Task<string> DownloadFileCoreAsync(string repoId, string file, string revision, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        // 1. A commit hash whose pointer exists needs no network at all.
        if (HubCache.IsCommitHash(revision))
        {
            string known = Cache.PointerPath(repoId, revision, file);
            if (File.Exists(known)) { ReportDone(progress, file, known); return known; }
        }

        // 2. HEAD: commit, etag (blob name), size and where to GET it.
        var meta = await GetFileMetadataAsync(repoId, file, revision, ct).ConfigureAwait(false);
        Cache.WriteRef(repoId, revision, meta.Commit);
        string pointer = Cache.PointerPath(repoId, meta.Commit, file);
        string blob = Cache.BlobPath(repoId, meta.Etag);
        if (File.Exists(pointer)) { ReportDone(progress, file, pointer); return pointer; }
        if (File.Exists(blob))
        {
            HubCache.LinkPointer(blob, pointer);
            ReportDone(progress, file, pointer);
            return pointer;
        }

        // 3. Download under the blob's lock; whoever held it before us may have finished the blob meanwhile.
        string lockPath = Cache.LockPath(repoId, meta.Etag);
        await using (await AcquireLockAsync(lockPath, ct).ConfigureAwait(false))
        {
            if (!File.Exists(blob))
                await DownloadBlobAsync(repoId, file, meta, blob, progress, ct).ConfigureAwait(false);
            else
                ReportDone(progress, file, blob);
            HubCache.LinkPointer(blob, pointer);
        }
        return pointer;
    }

    private static void ReportDone(IProgress<DownloadProgress>? progress, string file, string path)
    {
        if (progress == null) return;
        var info = new FileInfo(path);
        if (info.LinkTarget != null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) info = target;
        progress.Report(new DownloadProgress(file, info.Length, info.Length));
    }

    // Python's filelock (fcntl.flock on Unix) and .NET's FileShare.None (flock on Unix, share modes on Windows)
    // exclude each other, so a PixArtSharp and a Python download of the same blob take turns.
    private static async Task<FileStream> AcquireLockAsync(string lockPath, CancellationToken ct)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(lockPath)!);
        while (true)
        {
            try
            {
                return new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.None);
            }
            catch (IOException e) when (IsLockConflict(e))
            {
                await Task.Delay(100, ct).ConfigureAwait(false);
            }
        }
    }

    // Windows: ERROR_SHARING_VIOLATION / ERROR_LOCK_VIOLATION; Unix: flock's EWOULDBLOCK (11 on Linux, 35 on macOS).
    private static bool IsLockConflict(IOException e) =>
        e.GetType() == typeof(IOException) &&
        ((e.HResult & 0xFFFF) is 32 or 33 && (e.HResult & unchecked((int)0xFFFF0000)) == unchecked((int)0x80070000) || e.HResult is 11 or 35);

    // ───────────────────────────── transfer ─────────────────────────────

    private async Task DownloadBlobAsync(string repoId, string file, HubFileMetadata meta, string blob, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string incomplete = blob + ".incomplete";
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        var hash = meta.IsLfs ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
        var state = new Transfer(repoId, file, meta, progress);
        try
        {
            try
            {
                await using (var fs = new FileStream(incomplete, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read, 1 << 16, useAsync: true))
                {
                    state.Done = fs.Length;
                    if (state.Done > meta.Size) { fs.SetLength(0); state.Done = 0; }
                    if (hash != null && state.Done > 0)
                        await HashExistingAsync(fs, hash, ct).ConfigureAwait(false);
                    fs.Position = state.Done;
                    progress?.Report(new DownloadProgress(file, state.Done, meta.Size));

                    int attempt = 0;
                    while (state.Done < meta.Size)
                    {
                        try
                        {
                            await FetchAsync(state, fs, hash, ct).ConfigureAwait(false);
                        }
                        catch (HubDownloadException e) when (e.Kind == HubErrorKind.Network && attempt < MaxRetries)
                        {
                            // Like http_get's retries: resume from what is on disk with a Range request.
                            var wait = RetryDelay * Math.Pow(2, attempt++);
                            await Task.Delay(wait < TimeSpan.FromSeconds(8) ? wait : TimeSpan.FromSeconds(8), ct).ConfigureAwait(false);
                        }
                    }
                    await fs.FlushAsync(ct).ConfigureAwait(false);
                    fs.Flush(flushToDisk: true);
                }
            }
            catch (HubDownloadException e) when (e.Kind == HubErrorKind.Checksum)
            {
                File.Delete(incomplete);  // the file is closed by now
                throw;
            }

            // Nothing that fails these checks may become a blob: discard it so the next run starts clean.
            long length = new FileInfo(incomplete).Length;
            if (length != meta.Size)
                throw Corrupt($"{file} from {repoId} arrived with {length:N0} bytes but the Hub announced {meta.Size:N0}.");
            if (hash != null)
            {
                string actual = Convert.ToHexStringLower(hash.GetHashAndReset());
                if (actual != meta.Etag)
                    throw Corrupt($"{file} from {repoId} is corrupt: its sha256 is {actual} but the Hub says {meta.Etag}.");
            }
            File.Move(incomplete, blob, overwrite: true);
            progress?.Report(new DownloadProgress(file, meta.Size, meta.Size));
        }
        finally
        {
            hash?.Dispose();
        }

        HubDownloadException Corrupt(string what)
        {
            File.Delete(incomplete);
            return new HubDownloadException(HubErrorKind.Checksum, repoId, file,
                $"{what} The download was discarded (nothing was stored in the cache); try again. If it keeps happening, a proxy or disk is altering data.");
        }
    }

    private sealed class Transfer(string repoId, string file, HubFileMetadata meta, IProgress<DownloadProgress>? progress)
    {
        public readonly string RepoId = repoId, File = file;
        public readonly HubFileMetadata Meta = meta;
        public readonly IProgress<DownloadProgress>? Progress = progress;
        public long Done;
        public readonly Stopwatch SinceReport = Stopwatch.StartNew();
    }

    private static async Task HashExistingAsync(FileStream fs, IncrementalHash hash, CancellationToken ct)
    {
        fs.Position = 0;
        var buf = new byte[1 << 20];
        int n;
        while ((n = await fs.ReadAsync(buf, ct).ConfigureAwait(false)) > 0) hash.AppendData(buf, 0, n);
    }

    // One GET from state.Done to the end (or until the connection breaks).
    private async Task FetchAsync(Transfer s, FileStream fs, IncrementalHash? hash, CancellationToken ct)
    {
        var range = s.Done > 0 ? new RangeHeaderValue(s.Done, null) : null;
        using var response = await SendAsync(HttpMethod.Get, s.Meta.Location, s.RepoId, s.File, followRedirects: true, range, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable || (s.Done > 0 && response.StatusCode == HttpStatusCode.OK))
        {
            // The server ignored or refused the range: start the file over.
            fs.SetLength(0);
            fs.Position = 0;
            s.Done = 0;
            if (hash != null) hash.GetHashAndReset();
            if (response.StatusCode != HttpStatusCode.OK)
                throw new HubDownloadException(HubErrorKind.Network, s.RepoId, s.File, $"The server refused to resume {s.File} of {s.RepoId}; restarting it.");
        }
        else if (response.StatusCode == HttpStatusCode.PartialContent)
        {
            long? start = response.Content.Headers.ContentRange?.From;
            if (start != s.Done)
                throw new HubDownloadException(HubErrorKind.Server, s.RepoId, s.File,
                    $"Asked the Hub for {s.File} of {s.RepoId} from byte {s.Done} but it answered from byte {start}; try again later.");
        }
        else if (response.StatusCode != HttpStatusCode.OK)
            throw HttpError(response, s.RepoId, s.File, null);

        Stream body;
        try
        {
            body = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw NetworkError(s.RepoId, s.File, e);
        }
        await using var _ = body;
        var buffer = new byte[1 << 20];
        while (true)
        {
            int n;
            using (var stall = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                stall.CancelAfter(Settings.ReadTimeout);
                try
                {
                    n = await body.ReadAsync(buffer, stall.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
                {
                    throw NetworkError(s.RepoId, s.File, new TimeoutException($"no data for {Settings.ReadTimeout.TotalSeconds:0} s", e));
                }
                catch (Exception e) when (e is IOException or HttpRequestException)
                {
                    throw NetworkError(s.RepoId, s.File, e);
                }
            }
            if (n == 0) break;
            if (s.Done + n > s.Meta.Size)
            {
                // More bytes than announced: not the file we were promised (DownloadBlobAsync discards it).
                throw new HubDownloadException(HubErrorKind.Checksum, s.RepoId, s.File,
                    $"{s.File} from {s.RepoId} is longer than the {s.Meta.Size:N0} bytes the Hub announced. The download was discarded (nothing was stored in the cache); try again.");
            }
            await fs.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            hash?.AppendData(buffer, 0, n);
            s.Done += n;
            if (s.Progress != null && s.SinceReport.ElapsedMilliseconds >= 100)
            {
                s.Progress.Report(new DownloadProgress(s.File, s.Done, s.Meta.Size));
                s.SinceReport.Restart();
            }
        }
        if (s.Done < s.Meta.Size)
            throw NetworkError(s.RepoId, s.File, new IOException($"the connection closed after {s.Done:N0} of {s.Meta.Size:N0} bytes"));
    }

    // ───────────────────────────── metadata ─────────────────────────────

    /// <summary>The repo's commit at <paramref name="revision"/> and its file list (<c>GET /api/models/{repo}/revision/{revision}</c>).</summary>
    public async Task<RepoInfo> GetRepoInfoAsync(string repoId, string? revision = null, CancellationToken ct = default)
    {
        CheckArguments(repoId, ref revision);
        if (Settings.Offline)
            throw new HubDownloadException(HubErrorKind.Offline, repoId, null, $"HF_HUB_OFFLINE is set, so {repoId} cannot be looked up on the Hub.");
        var url = new Uri($"{Settings.Endpoint}/api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}");
        using var response = await SendAsync(HttpMethod.Get, url, repoId, null, followRedirects: true, null, ct).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.OK) throw HttpError(response, repoId, null, revision);
        try
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(Settings.ReadTimeout);
            await using var body = await response.Content.ReadAsStreamAsync(cts.Token).ConfigureAwait(false);
            using var doc = await JsonDocument.ParseAsync(body, cancellationToken: cts.Token).ConfigureAwait(false);
            var root = doc.RootElement;
            string? sha = root.TryGetProperty("sha", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString() : null;
            if (sha == null || !HubCache.IsCommitHash(sha))
                throw new HubDownloadException(HubErrorKind.Server, repoId, null, $"The Hub's answer for {repoId} has no commit hash (sha); check HF_ENDPOINT ({Settings.Endpoint}).");
            var files = new HashSet<string>(StringComparer.Ordinal);
            if (root.TryGetProperty("siblings", out var siblings) && siblings.ValueKind == JsonValueKind.Array)
                foreach (var sib in siblings.EnumerateArray())
                    if (sib.ValueKind == JsonValueKind.Object && sib.TryGetProperty("rfilename", out var f) && f.GetString() is { Length: > 0 } name)
                        files.Add(name);
            return new RepoInfo(repoId, sha, files);
        }
        catch (JsonException e)
        {
            throw new HubDownloadException(HubErrorKind.Server, repoId, null, $"The Hub's answer for {repoId} is not valid JSON ({e.Message}); check HF_ENDPOINT ({Settings.Endpoint}).", e);
        }
        catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw NetworkError(repoId, null, new TimeoutException("the file list did not arrive in time", e));
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw NetworkError(repoId, null, e);
        }
    }

    /// <summary><c>get_hf_file_metadata</c>: HEAD on the resolve URL without following a redirect to the CDN.</summary>
    public async Task<HubFileMetadata> GetFileMetadataAsync(string repoId, string file, string? revision = null, CancellationToken ct = default)
    {
        CheckArguments(repoId, ref revision);
        var url = new Uri($"{Settings.Endpoint}/{repoId}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}");
        using var r = await SendAsync(HttpMethod.Head, url, repoId, file, followRedirects: false, null, ct).ConfigureAwait(false);
        int status = (int)r.StatusCode;
        if (status is < 200 or >= 400) throw HttpError(r, repoId, file, revision);

        string? commit = Header(r, "X-Repo-Commit");
        string? etag = Header(r, "X-Linked-Etag") ?? Header(r, "ETag");
        // A weak etag (W/"...") comes from a compressed answer; huggingface_hub strips the marker and the quotes.
        if (etag != null) etag = (etag.StartsWith("W/", StringComparison.Ordinal) ? etag[2..] : etag).Trim('"');
        long? size = long.TryParse(Header(r, "X-Linked-Size"), out long linked) ? linked : r.Content.Headers.ContentLength;
        var location = status is >= 300 and < 400 && r.Headers.Location is { } loc ? (loc.IsAbsoluteUri ? loc : new Uri(url, loc)) : url;

        if (commit == null || !HubCache.IsCommitHash(commit))
            throw new HubDownloadException(HubErrorKind.Server, repoId, file,
                $"{Settings.Endpoint} does not answer like the Hugging Face Hub for {file} of {repoId} (no X-Repo-Commit header). Check HF_ENDPOINT, your proxy or firewall.");
        if (string.IsNullOrEmpty(etag) || etag.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_')))
            throw new HubDownloadException(HubErrorKind.Server, repoId, file,
                $"The Hub gave no usable ETag for {file} of {repoId} ('{etag}'), so it cannot be cached reliably. Check HF_ENDPOINT and your proxy.");
        if (size is not >= 0)
            throw new HubDownloadException(HubErrorKind.Server, repoId, file, $"The Hub gave no size for {file} of {repoId}. Check HF_ENDPOINT and your proxy.");
        return new HubFileMetadata(commit, etag, size.Value, location);
    }

    private static string? Header(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var v) || r.Content.Headers.TryGetValues(name, out v) ? v.FirstOrDefault() : null;

    // ───────────────────────────── HTTP ─────────────────────────────

    /// <summary>
    /// Sends a request with the token and without compression. With <paramref name="followRedirects"/>, follows up to
    /// 10 redirects, dropping the token when the host changes (a CDN URL is signed). Without it, follows only relative
    /// redirects (a renamed repo), as huggingface_hub's HEAD does, and returns the CDN redirect itself.
    /// </summary>
    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, Uri url, string repoId, string? file, bool followRedirects, RangeHeaderValue? range, CancellationToken ct)
    {
        var origin = new Uri(Settings.Endpoint);
        for (int hop = 0; ; hop++)
        {
            using var request = new HttpRequestMessage(method, url);
            request.Headers.AcceptEncoding.ParseAdd("identity");
            if (Settings.Token != null && SameHost(url, origin))
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Settings.Token);
            if (range != null) request.Headers.Range = range;

            HttpResponseMessage response;
            using (var cts = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                cts.CancelAfter(Settings.RequestTimeout);
                try
                {
                    response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
                {
                    throw NetworkError(repoId, file, new TimeoutException($"no answer from {url.Host} within {Settings.RequestTimeout.TotalSeconds:0} s", e));
                }
                catch (HttpRequestException e)
                {
                    throw NetworkError(repoId, file, e);
                }
            }

            int status = (int)response.StatusCode;
            if (status is >= 300 and < 400 && status != 304 && response.Headers.Location is { } loc
                && (followRedirects || !loc.IsAbsoluteUri) && hop < 10)
            {
                url = loc.IsAbsoluteUri ? loc : new Uri(url, loc);
                response.Dispose();
                continue;
            }
            return response;
        }
    }

    private static bool SameHost(Uri a, Uri b) =>
        string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase) && a.Port == b.Port && a.Scheme == b.Scheme;

    private HubDownloadException NetworkError(string repoId, string? file, Exception inner) =>
        new(HubErrorKind.Network, repoId, file,
            $"Could not download {(file == null ? repoId : $"{file} of {repoId}")} from {Settings.Endpoint}: {inner.Message}. " +
            "Check your internet connection (and HTTPS_PROXY if you need a proxy); to use only models already in the cache, set HF_HUB_OFFLINE=1.",
            inner);

    private HubDownloadException HttpError(HttpResponseMessage r, string repoId, string? file, string? revision)
    {
        int status = (int)r.StatusCode;
        string? code = Header(r, "X-Error-Code");
        string? serverMessage = Header(r, "X-Error-Message");
        string what = file == null ? repoId : $"{file} of {repoId}";
        string detail = serverMessage != null ? $" (Hub: {serverMessage})" : "";
        string tokenHint = Settings.Token == null
            ? "No token was sent: create one at https://huggingface.co/settings/tokens and set HF_TOKEN to it (or run `huggingface-cli login`)"
            : "A token was sent (HF_TOKEN or the saved login) but it was refused or its account has no access: check the token and the account";

        if (status is 401 or 403)
        {
            string text = code == "RepoNotFound"
                ? $"{repoId} was not found on {Settings.Endpoint}, or it is private ({status}){detail}. Check the id; if the repo is private or gated: {tokenHint}."
                : $"Access to {what} was refused ({status}){detail}: the repo is gated or private. {tokenHint}; for a gated repo, also accept its terms at {Settings.Endpoint}/{repoId}.";
            return new HubDownloadException(HubErrorKind.Unauthorized, repoId, file, text);
        }
        if (status == 404 || status == 410)
        {
            string text = code switch
            {
                "RevisionNotFound" => $"Revision '{revision}' was not found in {repoId}{detail}: check the branch, tag or commit hash.",
                "EntryNotFound" => $"{file} is not in {repoId} at revision '{revision}'{detail}.",
                _ when file != null && code == null => $"{what} was not found on {Settings.Endpoint} (404){detail}: check the model id and revision '{revision}'.",
                _ => $"{repoId} was not found on {Settings.Endpoint} (404){detail}: check the model id (org/name, e.g. PixArt-alpha/PixArt-LCM-XL-2-1024-MS). If it is private, set HF_TOKEN.",
            };
            return new HubDownloadException(HubErrorKind.NotFound, repoId, file, text);
        }
        return new HubDownloadException(HubErrorKind.Server, repoId, file,
            status >= 500
                ? $"The Hub answered {status} {r.ReasonPhrase} for {what}{detail}: it may be down or overloaded; try again later, or set HF_HUB_OFFLINE=1 to use the cache."
                : $"The Hub answered {status} {r.ReasonPhrase} for {what}{detail}, which PixArtSharp does not expect. Check HF_ENDPOINT ({Settings.Endpoint}) and your proxy.");
    }

    // ───────────────────────────── helpers ─────────────────────────────

    private static void CheckArguments(string repoId, [System.Diagnostics.CodeAnalysis.NotNull] ref string? revision)
    {
        if (!IsValidRepoId(repoId))
            throw new ArgumentException($"'{repoId}' is not a Hugging Face repo id: expected org/name, e.g. PixArt-alpha/PixArt-LCM-XL-2-1024-MS.", nameof(repoId));
        revision ??= "main";
        if (revision.Length == 0 || revision.Contains('\\') || revision.StartsWith('/') || revision.Split('/').Any(p => p is "" or "." or ".."))
            throw new ArgumentException($"'{revision}' is not a revision (a branch, tag or commit hash).", nameof(revision));
    }

    private static string Describe(string repoId, string revision, string? variant) =>
        $"{repoId} (revision {revision}{(string.IsNullOrEmpty(variant) ? "" : $", variant {variant}")})";

    // Everything the cache writes goes through here, so a full disk or a read-only folder gives one clear message.
    private async Task<T> WithDiskErrors<T>(string repoId, string? file, Func<Task<T>> body)
    {
        try
        {
            return await body().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HubDownloadException(HubErrorKind.Disk, repoId, file,
                $"Could not write to the Hugging Face cache at {Cache.Root} while downloading {(file == null ? repoId : $"{file} of {repoId}")}: {e.Message} " +
                "Free some disk space, or set HF_HUB_CACHE to a folder with room and write access. Nothing half-written is used: an interrupted file resumes on the next run.", e);
        }
    }
}
