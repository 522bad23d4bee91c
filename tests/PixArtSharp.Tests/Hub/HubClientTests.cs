using PixArtSharp.Hub;
using PixArtSharp.Loading;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Hub;

/// <summary>A temporary folder removed at the end of a test.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("pixart-hub-").FullName;
    public string Sub(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>
/// HubClient against <see cref="FakeHub"/> serving a temp copy of tiny-pixart-lcm. Each test has its own server,
/// repo copy and cache folder (passed to the client, never through the process environment).
/// </summary>
public sealed class HubClientTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDir _tmp = new();

    public void Dispose() => _tmp.Dispose();

    private string CopyRepo()
    {
        string src = Fixtures.Path("tiny-pixart-lcm");
        string dst = _tmp.Sub("repo");
        foreach (var f in Directory.EnumerateFiles(src, "*", SearchOption.AllDirectories))
        {
            string to = Path.Combine(dst, Path.GetRelativePath(src, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.WriteAllBytes(to, File.ReadAllBytes(f));  // not File.Copy: keep the copies writable
        }
        return dst;
    }

    private HubClient Client(FakeHub hub, string cache, string? token = null, bool offline = false, int maxRetries = 5) =>
        new(new HubSettings { Endpoint = hub.Endpoint, CacheDir = cache, Token = token, Offline = offline })
        {
            MaxRetries = maxRetries,
            RetryDelay = TimeSpan.FromMilliseconds(10),
        };

    private static string RepoFolder(string cache) => Path.Combine(cache, "models--test-org--tiny-pixart-lcm");

    /// <summary>Every file in the snapshot equals the repo's, is a relative symlink into blobs/ named by its etag, as Python lays it out.</summary>
    private static void AssertSnapshotMatches(FakeHub hub, string cache, string snapshot, IEnumerable<string> files)
    {
        Assert.Equal(Path.Combine(RepoFolder(cache), "snapshots", hub.Commit), snapshot);
        foreach (var f in files)
        {
            string local = Path.Combine(snapshot, f);
            Assert.True(File.Exists(local), $"{f} missing from the snapshot");
            Assert.Equal(hub.Bytes(f), File.ReadAllBytes(local));
            string depth = string.Concat(Enumerable.Repeat("../", f.Count(c => c == '/') + 2));
            Assert.Equal($"{depth}blobs/{hub.TrueEtag(f)}", new FileInfo(local).LinkTarget);
            Assert.True(File.Exists(Path.Combine(RepoFolder(cache), "blobs", hub.TrueEtag(f))));
        }
        Assert.Equal(hub.Commit, File.ReadAllText(Path.Combine(RepoFolder(cache), "refs", "main")));
        Assert.Empty(Directory.GetFiles(Path.Combine(RepoFolder(cache), "blobs"), "*.incomplete"));
    }

    [Fact]
    public async Task FullSnapshotDownloadLaysOutCacheLikeHuggingfaceHub()
    {
        using var hub = new FakeHub(CopyRepo());
        string cache = _tmp.Sub("cache");
        var reports = new List<DownloadProgress>();
        var progress = new SyncProgress(reports.Add);
        string snapshot;
        using (var client = Client(hub, cache, token: "hf_abc"))
            snapshot = await client.SnapshotDownloadAsync(hub.RepoId, null, null, progress);

        var all = hub.Files();
        Assert.Equal(12, all.Count);
        AssertSnapshotMatches(hub, cache, snapshot, all);
        // Spot checks of the exact link text Python writes.
        Assert.Equal($"../../blobs/{hub.TrueEtag("model_index.json")}", new FileInfo(Path.Combine(snapshot, "model_index.json")).LinkTarget);
        Assert.Equal($"../../../blobs/{hub.TrueEtag("transformer/config.json")}", new FileInfo(Path.Combine(snapshot, "transformer", "config.json")).LinkTarget);
        Assert.Equal(64, hub.TrueEtag("transformer/diffusion_pytorch_model.safetensors").Length);  // sha256 for LFS
        Assert.Equal(40, hub.TrueEtag("transformer/config.json").Length);                          // git sha1 otherwise
        foreach (var f in all)  // each blob was written under its lock, where Python's filelock puts it
            Assert.True(File.Exists(Path.Combine(cache, ".locks", "models--test-org--tiny-pixart-lcm", hub.TrueEtag(f) + ".lock")));

        // Protocol: one listing, a HEAD per file (the 302 to the CDN not followed), LFS bytes from the CDN only.
        Assert.Single(hub.RequestsFor("GET", "/api/models/"));
        Assert.Equal(all.Count, hub.RequestsFor("HEAD", $"/{hub.RepoId}/resolve/{hub.Commit}/").Count());
        Assert.Equal(all.Count(FakeHub.IsLfs), hub.RequestsFor("GET", "/cdn/").Count());
        Assert.Equal(all.Count(f => !FakeHub.IsLfs(f)), hub.RequestsFor("GET", $"/{hub.RepoId}/resolve/").Count());
        Assert.All(hub.RequestsFor("HEAD", "/"), r => Assert.Equal("Bearer hf_abc", r.Authorization));

        // Progress: every file ends with done == total == its size.
        foreach (var f in all)
            Assert.Contains(reports, p => p.File == f && p.BytesDone == hub.Bytes(f).Length && p.TotalBytes == p.BytesDone);

        // It is a normal diffusers folder: the loader reads it through the symlinks.
        var folder = ModelFolder.Open(snapshot);
        Assert.Equal("PixArtAlphaPipeline", folder.PipelineClass);
        var weights = ModelFolder.FindWeightFiles(folder.ComponentDir("transformer"), "diffusion_pytorch_model", null);
        using var st = SafeTensorsFile.Open(weights.Single());
        Assert.NotEmpty(st.Tensors);
        output.WriteLine($"{all.Count} files, {hub.Requests.Count} requests, {st.Tensors.Count} transformer tensors");
    }

    [Fact]
    public async Task SecondCallUsesTheCacheWithoutNetwork()
    {
        using var hub = new FakeHub(CopyRepo());
        string cache = _tmp.Sub("cache");
        string first;
        using (var client = Client(hub, cache)) first = await client.SnapshotDownloadAsync(hub.RepoId);

        // Online again: only the listing is asked; every file is already linked.
        int before = hub.Requests.Count;
        using (var client = Client(hub, cache)) Assert.Equal(first, await client.SnapshotDownloadAsync(hub.RepoId));
        Assert.Equal(1, hub.Requests.Count - before);

        // HF_HUB_OFFLINE: no request at all.
        before = hub.Requests.Count;
        using (var client = Client(hub, cache, offline: true)) Assert.Equal(first, await client.SnapshotDownloadAsync(hub.RepoId));
        Assert.Equal(before, hub.Requests.Count);
        Assert.Equal(first, HubCache.TryResolveLocal(hub.RepoId, null, null, cache));
        Assert.Equal(first, HubCache.TryResolveLocal(hub.RepoId, hub.Commit, null, cache));
        Assert.Null(HubCache.TryResolveLocal("test-org/other", null, null, cache));

        // Server gone: the connection error falls back to the complete cached snapshot.
        hub.Stop();
        using (var client = Client(hub, cache)) Assert.Equal(first, await client.SnapshotDownloadAsync(hub.RepoId));
        AssertSnapshotMatches(hub, cache, first, hub.Files());
    }

    [Fact]
    public async Task DroppedConnectionIsResumedWithRange()
    {
        using var hub = new FakeHub(CopyRepo());
        const string file = "text_encoder/model.safetensors";
        hub.DropAfter[file] = 300_000;
        string cache = _tmp.Sub("cache");
        var reports = new List<DownloadProgress>();
        string snapshot;
        using (var client = Client(hub, cache)) snapshot = await client.SnapshotDownloadAsync(hub.RepoId, progress: new SyncProgress(reports.Add));

        var ranged = hub.RequestsFor("GET", "/cdn/").Where(r => r.Range != null).ToList();
        Assert.Equal("bytes=300000-", Assert.Single(ranged).Range);
        Assert.Equal(hub.Bytes(file), File.ReadAllBytes(Path.Combine(snapshot, file)));
        AssertSnapshotMatches(hub, cache, snapshot, hub.Files());
        Assert.Equal(hub.Bytes(file).Length, reports.Last(p => p.File == file).BytesDone);
    }

    [Fact]
    public async Task InterruptedDownloadLeavesOnlyIncompleteAndNextRunResumes()
    {
        using var hub = new FakeHub(CopyRepo());
        const string file = "tokenizer/spiece.model";
        string etag = hub.TrueEtag(file);
        hub.DropAfter[file] = 200_000;
        string cache = _tmp.Sub("cache");
        string blobs = Path.Combine(RepoFolder(cache), "blobs");

        using (var client = Client(hub, cache, maxRetries: 0))
        {
            var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
            Assert.Equal(HubErrorKind.Network, e.Kind);
            Assert.Equal(file, e.File);
            Assert.Contains(hub.RepoId, e.Message);
            Assert.Contains("HF_HUB_OFFLINE", e.Message);
            output.WriteLine(e.Message);
        }
        Assert.Equal(200_000, new FileInfo(Path.Combine(blobs, etag + ".incomplete")).Length);
        Assert.False(File.Exists(Path.Combine(blobs, etag)));
        Assert.False(File.Exists(Path.Combine(RepoFolder(cache), "snapshots", hub.Commit, "tokenizer", "spiece.model")));
        Assert.Null(HubCache.TryResolveLocal(hub.RepoId, null, null, cache));

        using (var client = Client(hub, cache, maxRetries: 0))
        {
            string snapshot = await client.SnapshotDownloadAsync(hub.RepoId);
            AssertSnapshotMatches(hub, cache, snapshot, hub.Files());
        }
        Assert.Equal("bytes=200000-", Assert.Single(hub.RequestsFor("GET", "/cdn/" + etag), r => r.Range != null).Range);
    }

    [Fact]
    public async Task WrongChecksumIsAnErrorAndStoresNothing()
    {
        using var hub = new FakeHub(CopyRepo());
        const string file = "vae/diffusion_pytorch_model.safetensors";
        string bogus = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData("not the vae"u8));
        hub.EtagOverride[file] = bogus;
        string cache = _tmp.Sub("cache");
        using var client = Client(hub, cache);

        var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
        output.WriteLine(e.Message);
        Assert.Equal(HubErrorKind.Checksum, e.Kind);
        Assert.Equal(file, e.File);
        Assert.Contains(hub.RepoId, e.Message);
        Assert.Contains("try again", e.Message);
        string blobs = Path.Combine(RepoFolder(cache), "blobs");
        Assert.False(File.Exists(Path.Combine(blobs, bogus)));
        Assert.False(File.Exists(Path.Combine(blobs, hub.TrueEtag(file))));
        Assert.Empty(Directory.GetFiles(blobs, "*.incomplete"));
        string pointer = Path.Combine(RepoFolder(cache), "snapshots", hub.Commit, "vae", "diffusion_pytorch_model.safetensors");
        Assert.False(File.Exists(pointer) || new FileInfo(pointer).LinkTarget != null);
        // Every blob that was stored is intact.
        foreach (var b in Directory.GetFiles(blobs))
            Assert.Contains(hub.Files(), f => hub.TrueEtag(f) == Path.GetFileName(b));
    }

    [Fact]
    public async Task OnlyTheRequestedVariantIsFetched()
    {
        string repo = CopyRepo();
        const string fp16 = "transformer/diffusion_pytorch_model.fp16.safetensors";
        const string fp32 = "transformer/diffusion_pytorch_model.safetensors";
        var fake = File.ReadAllBytes(Path.Combine(repo, fp32)).Take(40_000).ToArray();
        File.WriteAllBytes(Path.Combine(repo, fp16), fake);
        File.WriteAllBytes(Path.Combine(repo, "transformer", "diffusion_pytorch_model.bin"), [1, 2, 3]);
        File.WriteAllBytes(Path.Combine(repo, "README.md"), "# readme"u8.ToArray());
        using var hub = new FakeHub(repo);

        string cacheFp16 = _tmp.Sub("cache16"), cacheDefault = _tmp.Sub("cache32");
        string s16, s32;
        using (var client = Client(hub, cacheFp16)) s16 = await client.SnapshotDownloadAsync(hub.RepoId, variant: "fp16");
        var heads16 = hub.RequestsFor("HEAD", "/").Select(r => r.Path).ToList();
        Assert.Contains(heads16, p => p.EndsWith(fp16, StringComparison.Ordinal));
        Assert.DoesNotContain(heads16, p => p.EndsWith(fp32, StringComparison.Ordinal) || p.EndsWith(".bin", StringComparison.Ordinal) || p.EndsWith("README.md", StringComparison.Ordinal));
        Assert.Equal(fake, File.ReadAllBytes(Path.Combine(s16, fp16)));
        Assert.False(File.Exists(Path.Combine(s16, fp32)));
        // Components without an fp16 file get their default weights, as diffusers' download does.
        Assert.True(File.Exists(Path.Combine(s16, "vae", "diffusion_pytorch_model.safetensors")));
        Assert.True(File.Exists(Path.Combine(s16, "text_encoder", "model.safetensors")));
        Assert.Equal(s16, HubCache.TryResolveLocal(hub.RepoId, null, "fp16", cacheFp16));

        hub.Requests.Clear();
        using (var client = Client(hub, cacheDefault)) s32 = await client.SnapshotDownloadAsync(hub.RepoId);
        var heads = hub.RequestsFor("HEAD", "/").Select(r => r.Path).ToList();
        Assert.Contains(heads, p => p.EndsWith(fp32, StringComparison.Ordinal));
        Assert.DoesNotContain(heads, p => p.EndsWith(fp16, StringComparison.Ordinal) || p.EndsWith(".bin", StringComparison.Ordinal) || p.EndsWith("README.md", StringComparison.Ordinal));
        Assert.False(File.Exists(Path.Combine(s32, fp16)));
        AssertSnapshotMatches(hub, cacheDefault, s32, hub.Files().Where(f => f != fp16 && !f.EndsWith(".bin", StringComparison.Ordinal) && f != "README.md"));
    }

    [Fact]
    public async Task ShardedWeightsFetchTheIndexAndItsShards()
    {
        string repo = CopyRepo();
        // Split text_encoder/model.safetensors into two "shards" (the downloader does not parse them).
        string te = Path.Combine(repo, "text_encoder");
        var bytes = File.ReadAllBytes(Path.Combine(te, "model.safetensors"));
        File.Delete(Path.Combine(te, "model.safetensors"));
        File.WriteAllBytes(Path.Combine(te, "model-00001-of-00002.safetensors"), bytes[..1000]);
        File.WriteAllBytes(Path.Combine(te, "model-00002-of-00002.safetensors"), bytes[1000..]);
        File.WriteAllText(Path.Combine(te, "model.safetensors.index.json"),
            """{"metadata": {"total_size": 1}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}""");
        using var hub = new FakeHub(repo);
        string cache = _tmp.Sub("cache");
        using var client = Client(hub, cache);
        string snapshot = await client.SnapshotDownloadAsync(hub.RepoId);
        AssertSnapshotMatches(hub, cache, snapshot, hub.Files());
        Assert.Equal(2, ModelFolder.ShardsOf(Path.Combine(snapshot, "text_encoder", "model.safetensors.index.json")).Count);
        Assert.Equal(snapshot, HubCache.TryResolveLocal(hub.RepoId, null, null, cache));
        // A missing shard makes the cached snapshot incomplete.
        File.Delete(Path.Combine(snapshot, "text_encoder", "model-00002-of-00002.safetensors"));
        Assert.Null(HubCache.TryResolveLocal(hub.RepoId, null, null, cache));
    }

    [Fact]
    public async Task ConcurrentDownloadsOfOneRepoShareOneCorrectCache()
    {
        using var hub = new FakeHub(CopyRepo()) { ChunkDelay = TimeSpan.FromMilliseconds(5) };
        string cache = _tmp.Sub("cache");
        using var a = Client(hub, cache);
        using var b = Client(hub, cache);
        var results = await Task.WhenAll(
            Task.Run(() => a.SnapshotDownloadAsync(hub.RepoId)),
            Task.Run(() => b.SnapshotDownloadAsync(hub.RepoId)));
        Assert.Equal(results[0], results[1]);
        AssertSnapshotMatches(hub, cache, results[0], hub.Files());
        // The per-blob lock let each LFS blob be fetched once; the other download waited and reused it.
        foreach (var f in hub.Files().Where(FakeHub.IsLfs))
            Assert.Single(hub.RequestsFor("GET", "/cdn/" + hub.TrueEtag(f)));
        Assert.Equal(2, hub.RequestsFor("GET", "/api/models/").Count());
        Assert.True(File.Exists(Path.Combine(cache, ".locks", "models--test-org--tiny-pixart-lcm", hub.TrueEtag("vae/diffusion_pytorch_model.safetensors") + ".lock")));
    }

    [Fact]
    public async Task DownloadWaitsForABlobLockHeldElsewhere()
    {
        using var hub = new FakeHub(CopyRepo());
        string cache = _tmp.Sub("cache");
        const string file = "transformer/diffusion_pytorch_model.safetensors";
        string lockPath = Path.Combine(cache, ".locks", "models--test-org--tiny-pixart-lcm", hub.TrueEtag(file) + ".lock");
        Directory.CreateDirectory(Path.GetDirectoryName(lockPath)!);
        // Another process (e.g. Python's filelock) holds the blob's lock.
        var held = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        using var client = Client(hub, cache);
        var download = client.DownloadFileAsync(hub.RepoId, file);
        await Task.Delay(400);
        Assert.False(download.IsCompleted);
        Assert.Empty(hub.RequestsFor("GET", "/cdn/"));
        held.Dispose();
        string path = await download.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(hub.Bytes(file), File.ReadAllBytes(path));
        Assert.Equal(hub.Commit, File.ReadAllText(Path.Combine(RepoFolder(cache), "refs", "main")));
    }

    [Fact]
    public async Task GatedRepoWithoutTokenSaysToSetHfToken()
    {
        using var hub = new FakeHub(CopyRepo()) { RequiredToken = "hf_secret" };
        string cache = _tmp.Sub("cache");
        using (var client = Client(hub, cache))
        {
            var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
            output.WriteLine(e.Message);
            Assert.Equal(HubErrorKind.Unauthorized, e.Kind);
            Assert.Contains(hub.RepoId, e.Message);
            Assert.Contains("HF_TOKEN", e.Message);
            Assert.Contains("gated", e.Message);
        }
        using (var client = Client(hub, cache, token: "hf_wrong"))
        {
            var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
            Assert.Equal(HubErrorKind.Unauthorized, e.Kind);
            Assert.Contains("refused", e.Message);
        }
        using (var client = Client(hub, cache, token: "hf_secret"))
            AssertSnapshotMatches(hub, cache, await client.SnapshotDownloadAsync(hub.RepoId), hub.Files());
    }

    [Fact]
    public async Task UnknownRepoAndRevisionAreNotFound()
    {
        using var hub = new FakeHub(CopyRepo());
        using var client = Client(hub, _tmp.Sub("cache"));
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync("test-org/nope"));
        Assert.Equal(HubErrorKind.NotFound, e.Kind);
        Assert.Contains("test-org/nope", e.Message);
        e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId, "v9"));
        Assert.Equal(HubErrorKind.NotFound, e.Kind);
        Assert.Contains("Revision 'v9'", e.Message);
        e = await Assert.ThrowsAsync<HubDownloadException>(() => client.DownloadFileAsync(hub.RepoId, "nope/config.json"));
        Assert.Equal(HubErrorKind.NotFound, e.Kind);
        Assert.Equal("nope/config.json", e.File);
        await Assert.ThrowsAsync<ArgumentException>(() => client.SnapshotDownloadAsync("../etc"));
        await Assert.ThrowsAsync<ArgumentException>(() => client.SnapshotDownloadAsync(hub.RepoId, "../../x"));
    }

    [Fact]
    public async Task OfflineWithEmptyCacheNamesTheRepo()
    {
        string cache = _tmp.Sub("cache");
        using var client = new HubClient(new HubSettings { Endpoint = "http://127.0.0.1:9", CacheDir = cache, Offline = true });
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync("PixArt-alpha/PixArt-LCM-XL-2-1024-MS"));
        output.WriteLine(e.Message);
        Assert.Equal(HubErrorKind.Offline, e.Kind);
        Assert.Contains("PixArt-alpha/PixArt-LCM-XL-2-1024-MS", e.Message);
        Assert.Contains("not in the Hugging Face cache", e.Message);
        Assert.Contains("HF_HUB_OFFLINE", e.Message);
        Assert.False(Directory.Exists(cache));  // offline never writes
    }

    [Fact]
    public async Task UnreachableHubWithEmptyCacheIsANetworkError()
    {
        using var hub = new FakeHub(CopyRepo());
        hub.Stop();
        using var client = Client(hub, _tmp.Sub("cache"));
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
        output.WriteLine(e.Message);
        Assert.Equal(HubErrorKind.Network, e.Kind);
        Assert.Contains(hub.RepoId, e.Message);
        Assert.Contains("HF_HUB_OFFLINE=1", e.Message);
        Assert.Contains("not in the cache", e.Message);
    }

    [Fact]
    public async Task UnwritableCacheIsADiskError()
    {
        using var hub = new FakeHub(CopyRepo());
        string notADir = _tmp.Sub("file");
        File.WriteAllText(notADir, "x");
        using var client = Client(hub, notADir);
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => client.SnapshotDownloadAsync(hub.RepoId));
        output.WriteLine(e.Message);
        Assert.Equal(HubErrorKind.Disk, e.Kind);
        Assert.Contains("HF_HUB_CACHE", e.Message);
        Assert.Contains(hub.RepoId, e.Message);
    }

    [Fact]
    public async Task ReadsACacheLaidOutByPython()
    {
        // Build by hand what huggingface_hub leaves: blobs named by etag, relative links, refs/main.
        string repo = CopyRepo();
        using var hub = new FakeHub(repo);  // only used for etags; never contacted (offline)
        string cache = _tmp.Sub("cache");
        string folder = RepoFolder(cache);
        const string commit = "1234567890abcdef1234567890abcdef12345678";
        foreach (var f in hub.Files())
        {
            string blob = Path.Combine(folder, "blobs", hub.TrueEtag(f));
            Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
            File.WriteAllBytes(blob, hub.Bytes(f));
            string pointer = Path.Combine(folder, "snapshots", commit, f);
            Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
            File.CreateSymbolicLink(pointer, Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob));
        }
        Directory.CreateDirectory(Path.Combine(folder, "refs"));
        File.WriteAllText(Path.Combine(folder, "refs", "main"), commit);
        string expected = Path.Combine(folder, "snapshots", commit);

        Assert.Equal(expected, HubCache.TryResolveLocal(hub.RepoId, cacheDir: cache));
        using var client = Client(hub, cache, offline: true);
        Assert.Equal(expected, await client.SnapshotDownloadAsync(hub.RepoId));
        Assert.Equal(Path.Combine(expected, "vae", "config.json"), new HubCache(cache).TryGetFile(hub.RepoId, "vae/config.json"));
        Assert.Empty(hub.Requests);
    }

    [Fact]
    public async Task ModelLocatorTakesFoldersAsTheyAreAndIdsFromTheHub()
    {
        string local = Fixtures.Path("tiny-pixart-lcm");
        Assert.Equal(Path.GetFullPath(local), await ModelLocator.ResolveAsync(local));
        Assert.Throws<ModelNotFoundException>(() => ModelLocator.Resolve(_tmp.Sub("no-such-folder")));
        Assert.Throws<ModelNotFoundException>(() => ModelLocator.Resolve("./models/pixart"));
        Assert.Throws<ModelNotFoundException>(() => ModelLocator.Resolve(Path.Combine(local, "model_index.json")));

        using var hub = new FakeHub(CopyRepo());
        var settings = new HubSettings { Endpoint = hub.Endpoint, CacheDir = _tmp.Sub("cache") };
        string snapshot = await ModelLocator.ResolveAsync(hub.RepoId, settings: settings);
        AssertSnapshotMatches(hub, settings.CacheDir, snapshot, hub.Files());
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => ModelLocator.ResolveAsync("test-org/missing", settings: settings));
        Assert.Contains("not an existing local folder", e.Message);
    }

    private sealed class SyncProgress(Action<DownloadProgress> report) : IProgress<DownloadProgress>
    {
        private readonly object _gate = new();
        public void Report(DownloadProgress value) { lock (_gate) report(value); }
    }
}
