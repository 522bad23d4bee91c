using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// What keeps <c>pixart serve</c> up and its answers clean (issue 15): the port is bound before the model loads, a
/// failed generation becomes an error answer that names the file but never a local path, images record the model by
/// name and weights hash, and uploads are decoded a few at a time.
/// </summary>
public static partial class ServeSafety
{
    // ───────────────────────────── the port, before the model ─────────────────────────────

    /// <summary>
    /// Binds <paramref name="host"/>:<paramref name="port"/> and keeps it until the returned handle is disposed
    /// (just before Kestrel binds it for good), so a taken port is found before a minute of loading, not after.
    /// Port 0 (any free port) needs no check. A taken or unusable address is a <see cref="UsageException"/> (exit 2).
    /// </summary>
    public static IDisposable ReservePort(string host, int port)
    {
        if (port == 0) return new Reservation([]);
        IPAddress[] addresses;
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) addresses = [IPAddress.Loopback];
        else if (IPAddress.TryParse(host.Trim('[', ']'), out var ip)) addresses = [ip];
        else
        {
            try { addresses = Dns.GetHostAddresses(host); }
            catch (SocketException e) { throw new UsageException($"--host {host}: cannot resolve it ({e.Message}). Give an IP address such as 127.0.0.1 or 0.0.0.0."); }
            if (addresses.Length == 0) throw new UsageException($"--host {host}: it resolves to no address. Give an IP address such as 127.0.0.1 or 0.0.0.0.");
            addresses = [addresses[0]];
        }
        var held = new List<Socket>();
        foreach (var address in addresses)
        {
            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                socket.Bind(new IPEndPoint(address, port));
                socket.Listen(1);
                held.Add(socket);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                foreach (var s in held) s.Dispose();
                throw new UsageException(e.SocketErrorCode switch
                {
                    SocketError.AddressAlreadyInUse => $"--port {port}: {host}:{port} is already in use (another pixart serve?). Stop that server or choose another --port.",
                    SocketError.AccessDenied => $"--port {port}: not allowed to listen on {host}:{port} (ports below 1024 need privileges). Choose a port above 1023.",
                    SocketError.AddressNotAvailable => $"--host {host}: this machine has no such address. Use 127.0.0.1, 0.0.0.0 or one of its own addresses.",
                    _ => $"--host {host} --port {port}: cannot listen there ({e.Message}).",
                });
            }
        }
        return new Reservation(held);
    }

    private sealed class Reservation(List<Socket> sockets) : IDisposable
    {
        public void Dispose() { foreach (var s in sockets) s.Dispose(); }
    }

    // ───────────────────────────── what images record ─────────────────────────────

    /// <summary>
    /// The record the server's images carry: the model by its name (a Hub id as it is, a local folder by its folder
    /// name) and, for a local folder, <c>sha256:</c> + the first 12 hex digits of a hash of its transformer's
    /// safetensors headers as the revision (a Hub model keeps its commit) — never a path of this machine.
    /// Components from elsewhere are recorded by name too.
    /// </summary>
    public static ModelInfo ServedModel(ModelInfo model, string? transformerDir)
    {
        bool local = Directory.Exists(model.Model) || File.Exists(model.Model);
        return model with
        {
            Model = ImageFiles.ModelLabel(model.Model),
            ModelRevision = local ? (transformerDir is null ? null : WeightsHash(transformerDir)) : model.ModelRevision,
            TextEncoder = model.TextEncoder is null ? null : ImageFiles.ModelLabel(model.TextEncoder),
            Transformer = model.Transformer is null ? null : ImageFiles.ModelLabel(model.Transformer),
            Vae = model.Vae is null ? null : ImageFiles.ModelLabel(model.Vae),
        };
    }

    /// <summary>
    /// "sha256:" + 12 hex digits over the safetensors headers (names, dtypes, shapes, offsets) of every
    /// <c>*.safetensors</c> file in <paramref name="dir"/>, in name order: cheap (no tensor data is read) and different
    /// for different checkpoints. Null when there is none.
    /// </summary>
    public static string? WeightsHash(string dir)
    {
        if (!Directory.Exists(dir)) return null;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        int files = 0;
        Span<byte> len = stackalloc byte[8];
        foreach (var f in Directory.GetFiles(dir, "*.safetensors").Order(StringComparer.Ordinal))
        {
            using var fs = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
            if (fs.ReadAtLeast(len, 8, throwOnEndOfStream: false) < 8) continue;
            long n = BinaryPrimitives.ReadInt64LittleEndian(len);
            if (n is <= 0 or > 100_000_000) continue; // not a header the loader would accept: the load says so
            var header = new byte[n];
            if (fs.ReadAtLeast(header, (int)n, throwOnEndOfStream: false) < n) continue;
            sha.AppendData(header);
            files++;
        }
        return files == 0 ? null : "sha256:" + Convert.ToHexStringLower(sha.GetHashAndReset())[..12];
    }

    // ───────────────────────────── errors as answers ─────────────────────────────

    /// <summary>
    /// A generation's exception as the answer a client gets: NaN/Inf output is 500 "non_finite_output"; a broken or
    /// vanished weight file is 503 "model_unavailable" (the server stays up; an operator must fix the files); anything
    /// else 500 "generation_failed". Local paths in the message are cut to the file's last two parts.
    /// </summary>
    public static ApiException ToApiError(Exception e) => e switch
    {
        ApiException a => a,
        NonFiniteOutputException n => new ApiException(500, $"Generation failed: {n.Stage} hold NaN or infinite values, so no image is returned. The model's weights or config are broken.", code: "non_finite_output"),
        WeightFileException or ModelNotFoundException or IOException or UnauthorizedAccessException or InvalidDataException =>
            new ApiException(503, "The model cannot be used right now: " + ScrubPaths(e.Message), code: "model_unavailable"),
        _ => new ApiException(500, "Generation failed: " + ScrubPaths(e.Message), code: "generation_failed"),
    };

    [GeneratedRegex(@"(?<![\w.~-])/[^\s'""`<>|]+")]
    private static partial Regex AbsolutePath();

    /// <summary>"/home/me/models/x/transformer/w.safetensors" → "transformer/w.safetensors": names the file, hides the machine.</summary>
    public static string ScrubPaths(string message) => AbsolutePath().Replace(message, m =>
    {
        string path = m.Value, tail = "";
        while (path.Length > 1 && ".,;:)]".Contains(path[^1])) { tail = path[^1] + tail; path = path[..^1]; }
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        return (parts.Length == 0 ? "" : string.Join('/', parts.TakeLast(2))) + tail;
    });

    // ───────────────────────────── uploads, a few at a time ─────────────────────────────

    /// <summary>
    /// Images decoded at once; the rest wait up to <see cref="DecodeWait"/>, then get 429. One: a 16 MP decode
    /// peaks at about 165 MB (libvips' image, its output and the managed copy), and the server runs one generation
    /// at a time anyway; measured +165 MB peak for 8 concurrent 4001×4001 uploads, +575 MB without the limit.
    /// </summary>
    public const int MaxConcurrentDecodes = 1;
    public static readonly TimeSpan DecodeWait = TimeSpan.FromSeconds(5);
    /// <summary>The largest source image accepted (pixels, from the header, before decoding): 4096×4096.</summary>
    public const long MaxUploadPixels = 4096L * 4096;
    private static readonly SemaphoreSlim Decodes = new(MaxConcurrentDecodes, MaxConcurrentDecodes);
    private static int _decodesSinceCollect;

    /// <summary>
    /// Runs <paramref name="decode"/> holding one of <see cref="MaxConcurrentDecodes"/> slots; when none frees within
    /// <see cref="DecodeWait"/> the request gets 429 (Retry-After 1). After a large decode the memory goes back to the
    /// system (a compacting collection returns the large-object heap's pages), so peaks do not stay resident.
    /// </summary>
    public static T LimitDecode<T>(Func<T> decode)
    {
        if (!Decodes.Wait(DecodeWait))
            throw new ApiException(429, $"The server is decoding {MaxConcurrentDecodes} uploaded images already; retry in a moment.", "image", "busy_decoding");
        try
        {
            return decode();
        }
        finally
        {
            Decodes.Release();
            // Give large buffers back to the OS once the decodes in flight are done.
            if (Interlocked.Increment(ref _decodesSinceCollect) >= 1 && Decodes.CurrentCount == MaxConcurrentDecodes)
            {
                Interlocked.Exchange(ref _decodesSinceCollect, 0);
                System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            }
        }
    }
}
