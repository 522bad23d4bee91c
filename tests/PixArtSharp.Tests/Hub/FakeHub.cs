using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace PixArtSharp.Tests.Hub;

/// <summary>One request the fake Hub received.</summary>
public sealed record FakeRequest(string Method, string Path, string? Range, string? Authorization);

/// <summary>
/// A minimal Hugging Face Hub on 127.0.0.1 (random free port), raw HTTP/1.1 over a TcpListener so that a test can
/// break a connection in the middle of a file. It serves one repo folder with the real protocol:
/// <list type="bullet">
/// <item><c>GET /api/models/{repo}/revision/{rev}</c> → <c>{"sha", "siblings": [{"rfilename"}]}</c></item>
/// <item><c>HEAD|GET /{repo}/resolve/{rev}/{path}</c>: regular files → 200 with <c>ETag</c> = git blob sha1;
/// LFS files (*.safetensors, spiece.model) → 302 to <c>/cdn/{sha256}</c> with <c>X-Linked-Etag</c>, <c>X-Linked-Size</c>;
/// always <c>X-Repo-Commit</c>; <c>X-Error-Code</c> on 401/404 as the Hub sends it</item>
/// <item><c>GET /cdn/{sha256}</c>: the bytes, with <c>Range: bytes=N-</c> support (206)</item>
/// </list>
/// Every answer closes its connection (Connection: close).
/// </summary>
public sealed class FakeHub : IDisposable
{
    public const string DefaultRepoId = "test-org/tiny-pixart-lcm";

    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly Dictionary<string, (string Path, bool Lfs)> _byEtag = new(StringComparer.Ordinal);

    public string RepoId { get; }
    public string RepoDir { get; }
    /// <summary>A fixed commit hash; "main" resolves to it.</summary>
    public string Commit { get; } = Convert.ToHexStringLower(SHA1.HashData(Encoding.UTF8.GetBytes("fake commit")));
    public int Port { get; }
    public string Endpoint => $"http://127.0.0.1:{Port}";
    public ConcurrentQueue<FakeRequest> Requests { get; } = new();

    /// <summary>When set, every API and resolve request needs <c>Authorization: Bearer {token}</c> (as a gated repo).</summary>
    public string? RequiredToken { get; set; }
    /// <summary>Repo path → number of body bytes to send before breaking the connection (used once, then removed).</summary>
    public ConcurrentDictionary<string, long> DropAfter { get; } = new();
    /// <summary>Repo path → etag to announce instead of the real one (a corrupted upload or CDN).</summary>
    public ConcurrentDictionary<string, string> EtagOverride { get; } = new();
    /// <summary>Pause between 64 KiB chunks of a file body, to make concurrent downloads overlap.</summary>
    public TimeSpan ChunkDelay { get; set; }

    public FakeHub(string repoDir, string repoId = DefaultRepoId)
    {
        RepoDir = repoDir;
        RepoId = repoId;
        Refresh();
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _loop = Task.Run(AcceptLoop);
    }

    /// <summary>Re-reads the repo folder (after a test adds files).</summary>
    public void Refresh()
    {
        lock (_byEtag)
        {
            _byEtag.Clear();
            foreach (var f in Files()) _byEtag[TrueEtag(f)] = (f, IsLfs(f));
        }
    }

    /// <summary>Repo paths of every file, '/' separated.</summary>
    public IReadOnlyList<string> Files() =>
        Directory.EnumerateFiles(RepoDir, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(RepoDir, f).Replace('\\', '/')).Order(StringComparer.Ordinal).ToList();

    public static bool IsLfs(string path) => path.EndsWith(".safetensors", StringComparison.Ordinal) || path.EndsWith("spiece.model", StringComparison.Ordinal);

    public byte[] Bytes(string path) => File.ReadAllBytes(Path.Combine(RepoDir, path));

    /// <summary>sha256 for LFS files, git blob sha1 ("blob {len}\0" + bytes) for the others, as the Hub's etags.</summary>
    public string TrueEtag(string path)
    {
        var bytes = Bytes(path);
        if (IsLfs(path)) return Convert.ToHexStringLower(SHA256.HashData(bytes));
        var header = Encoding.ASCII.GetBytes($"blob {bytes.Length}\0");
        return Convert.ToHexStringLower(SHA1.HashData([.. header, .. bytes]));
    }

    public string AnnouncedEtag(string path) => EtagOverride.TryGetValue(path, out var e) ? e : TrueEtag(path);

    public IEnumerable<FakeRequest> RequestsFor(string method, string pathPrefix) =>
        Requests.Where(r => r.Method == method && r.Path.StartsWith(pathPrefix, StringComparison.Ordinal));

    public void Stop()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        _listener.Stop();
        try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }

    public void Dispose() => Stop();

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
            catch (Exception) { return; }
            _ = Task.Run(async () =>
            {
                using (client)
                {
                    try { await Handle(client.GetStream()); }
                    catch (IOException) { }        // the client went away
                    catch (SocketException) { }
                    catch (OperationCanceledException) { }
                }
            });
        }
    }

    private async Task Handle(NetworkStream stream)
    {
        // Request line and headers (no request bodies in this protocol).
        var head = new StringBuilder();
        var one = new byte[1];
        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
        {
            if (await stream.ReadAsync(one, _stop.Token) == 0) return;
            head.Append((char)one[0]);
        }
        var lines = head.ToString().Split("\r\n");
        var parts = lines[0].Split(' ');
        string method = parts[0], target = Uri.UnescapeDataString(parts[1].Split('?')[0]);
        var headers = lines.Skip(1).Where(l => l.Contains(':'))
            .ToDictionary(l => l[..l.IndexOf(':')].Trim(), l => l[(l.IndexOf(':') + 1)..].Trim(), StringComparer.OrdinalIgnoreCase);
        headers.TryGetValue("Range", out var range);
        headers.TryGetValue("Authorization", out var auth);
        Requests.Enqueue(new FakeRequest(method, target, range, auth));

        var reply = new Reply(stream, method == "HEAD", _stop.Token);
        string apiPrefix = $"/api/models/{RepoId}/revision/";
        string resolvePrefix = $"/{RepoId}/resolve/";

        if (target.StartsWith("/cdn/", StringComparison.Ordinal))
        {
            (string Path, bool Lfs) entry;
            lock (_byEtag) { if (!_byEtag.TryGetValue(target[5..], out entry)) entry = ("", false); }
            if (entry.Path == "") { await reply.Status(404, "Not Found").Send(); return; }
            await ServeBody(reply, entry.Path, range);
            return;
        }
        if (target.StartsWith("/api/models/", StringComparison.Ordinal) || target.Contains("/resolve/"))
        {
            if (RequiredToken != null && auth != $"Bearer {RequiredToken}")
            {
                // The Hub's answer for a gated repo without (valid) access.
                await reply.Status(401, "Unauthorized").Header("X-Error-Code", "GatedRepo")
                    .Header("X-Error-Message", $"Access to model {RepoId} is restricted. You must be authenticated to access it.").Send();
                return;
            }
        }
        if (target.StartsWith(apiPrefix, StringComparison.Ordinal))
        {
            string rev = target[apiPrefix.Length..];
            if (rev != "main" && rev != Commit) { await reply.Status(404, "Not Found").Header("X-Error-Code", "RevisionNotFound").Send(); return; }
            var json = JsonSerializer.SerializeToUtf8Bytes(new
            {
                id = RepoId,
                sha = Commit,
                siblings = Files().Select(f => new { rfilename = f }).ToArray(),
            });
            await reply.Status(200, "OK").Header("Content-Type", "application/json").Body(json).Send();
            return;
        }
        if (target.StartsWith(resolvePrefix, StringComparison.Ordinal))
        {
            string rest = target[resolvePrefix.Length..];
            int slash = rest.IndexOf('/');
            string rev = rest[..slash], path = rest[(slash + 1)..];
            if (rev != "main" && rev != Commit) { await reply.Status(404, "Not Found").Header("X-Error-Code", "RevisionNotFound").Send(); return; }
            if (!Files().Contains(path))
            {
                await reply.Status(404, "Not Found").Header("X-Error-Code", "EntryNotFound").Header("X-Repo-Commit", Commit).Send();
                return;
            }
            string etag = AnnouncedEtag(path);
            if (IsLfs(path))
            {
                // As huggingface.co: the resolve URL of an LFS file redirects to the CDN; the pointer file's own etag
                // and size are in ETag/Content-Length, the real file's in X-Linked-*.
                string pointer = $"version https://git-lfs.github.com/spec/v1\noid sha256:{etag}\nsize {Bytes(path).Length}\n";
                await reply.Status(302, "Found")
                    .Header("Location", $"{Endpoint}/cdn/{TrueEtag(path)}")
                    .Header("X-Repo-Commit", Commit)
                    .Header("X-Linked-Etag", $"\"{etag}\"")
                    .Header("X-Linked-Size", Bytes(path).Length.ToString(CultureInfo.InvariantCulture))
                    .Header("ETag", $"\"{Convert.ToHexStringLower(SHA1.HashData(Encoding.UTF8.GetBytes(pointer)))}\"")
                    .Body(Encoding.UTF8.GetBytes(pointer)).Send();
                return;
            }
            reply.Header("X-Repo-Commit", Commit).Header("ETag", $"\"{etag}\"");
            await ServeBody(reply, path, range);
            return;
        }
        await reply.Status(404, "Not Found").Header("X-Error-Code", "RepoNotFound").Send();
    }

    private async Task ServeBody(Reply reply, string path, string? range)
    {
        var bytes = Bytes(path);
        long start = 0;
        if (range != null && range.StartsWith("bytes=", StringComparison.Ordinal) && range.EndsWith('-') && long.TryParse(range[6..^1], out start))
        {
            if (start >= bytes.Length)
            {
                await reply.Status(416, "Range Not Satisfiable").Header("Content-Range", $"bytes */{bytes.Length}").Send();
                return;
            }
            reply.Status(206, "Partial Content").Header("Content-Range", $"bytes {start}-{bytes.Length - 1}/{bytes.Length}");
        }
        else reply.Status(200, "OK");
        long? dropAt = DropAfter.TryRemove(path, out long d) ? d : null;
        await reply.Body(bytes.AsMemory((int)start), dropAt, ChunkDelay).Send();
    }

    private sealed class Reply(NetworkStream stream, bool isHead, CancellationToken ct)
    {
        private int _status = 200;
        private string _reason = "OK";
        private readonly List<(string, string)> _headers = [];
        private ReadOnlyMemory<byte> _body = ReadOnlyMemory<byte>.Empty;
        private long? _dropAfter;
        private TimeSpan _chunkDelay;

        public Reply Status(int status, string reason) { _status = status; _reason = reason; return this; }
        public Reply Header(string name, string value) { _headers.Add((name, value)); return this; }
        public Reply Body(ReadOnlyMemory<byte> body, long? dropAfter = null, TimeSpan chunkDelay = default)
        {
            _body = body; _dropAfter = dropAfter; _chunkDelay = chunkDelay; return this;
        }

        public async Task Send()
        {
            var sb = new StringBuilder($"HTTP/1.1 {_status} {_reason}\r\n");
            foreach (var (n, v) in _headers) sb.Append(CultureInfo.InvariantCulture, $"{n}: {v}\r\n");
            sb.Append(CultureInfo.InvariantCulture, $"Content-Length: {_body.Length}\r\nConnection: close\r\n\r\n");
            await stream.WriteAsync(Encoding.ASCII.GetBytes(sb.ToString()), ct);
            if (isHead) return;
            long limit = _dropAfter ?? _body.Length;
            for (int off = 0; off < limit; off += 64 * 1024)
            {
                int n = (int)Math.Min(64 * 1024, limit - off);
                await stream.WriteAsync(_body.Slice(off, n), ct);
                if (_chunkDelay > TimeSpan.Zero) await Task.Delay(_chunkDelay, ct);
            }
            await stream.FlushAsync(ct);
            // With _dropAfter set, returning here closes the socket before Content-Length bytes: a broken transfer.
        }
    }
}
