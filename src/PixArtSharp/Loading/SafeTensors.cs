using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>One entry of a safetensors header: where a tensor's bytes are, relative to the data area.</summary>
internal sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>
/// Reads the safetensors format (u64 LE header length, JSON header, raw little-endian data) without copying:
/// each tensor is a view into one memory mapping of the file (<c>torch.from_file</c>), so a 10 GB checkpoint
/// costs only the pages actually touched. The header is validated as strictly as the format promises before
/// any tensor is handed out, so a corrupt or hostile file is an error naming the file and tensor, never a read
/// past the end of the mapping.
/// <para>A mapping is only as safe as the file under it: if the file is truncated while a view of it is alive
/// (a re-download or <c>git pull</c> writing in place, a copy onto a full disk), the next touch of a page past
/// the new end kills the process with SIGBUS — no exception can catch that. A long-lived process (the server)
/// therefore loads with <see cref="LoadCopy"/> (<see cref="WeightLoadOptions.CopyOnLoad"/>): the bytes are read
/// with read(2) into memory the process owns, so a later change of the file cannot reach them. Either way the
/// file's length and modification time are checked before each load, so a file that changed since it was opened
/// is an error naming it, not a mapping past its end.</para>
/// </summary>
internal sealed class SafeTensorsFile : IDisposable
{
    /// <summary>The reference implementation refuses headers above 100 MB; so do we.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8),
        ["F32"] = (ScalarType.Float32, 4),
        ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2),
        ["I64"] = (ScalarType.Int64, 8),
        ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2),
        ["I8"] = (ScalarType.Int8, 1),
        ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    private readonly Dictionary<string, SafeTensorInfo> _tensors;
    // One mapping per element type: from_file maps the whole file as a 1-D tensor of that type, and each
    // tensor is a narrow + view of it (valid because its absolute offset is a multiple of its element size).
    private readonly Dictionary<ScalarType, Tensor> _maps = new();
    private readonly Lock _lock = new();
    private bool _disposed;

    public string FilePath { get; }
    /// <summary>The file's length when it was validated; a file that changes afterwards is refused, not mapped.</summary>
    public long FileLength { get; }
    /// <summary>The file's length and modification time when it was validated (links followed).</summary>
    public FileStamp Stamp { get; }
    public long DataStart { get; }
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafeTensorsFile(string path, FileStamp stamp, long dataStart, Dictionary<string, SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        FilePath = path;
        Stamp = stamp;
        FileLength = stamp.Length;
        DataStart = dataStart;
        _tensors = tensors;
        Metadata = metadata;
    }

    public static bool IsKnownDType(string dtype) => DTypes.ContainsKey(dtype);
    public static ScalarType ToScalarType(string dtype) => DTypes[dtype].Type;
    public static int ElementSize(string dtype) => DTypes[dtype].Size;

    public static string ToDTypeName(ScalarType type) =>
        DTypes.FirstOrDefault(kv => kv.Value.Type == type).Key
        ?? throw new ArgumentException($"The safetensors format has no name for {type}.");

    /// <summary>Opens and validates a file. Nothing but the header is read.</summary>
    public static SafeTensorsFile Open(string path)
    {
        var stamp = ModelFiles.CheckReadable(path, "weight file");
        long fileLength;
        byte[] header;
        using (var fs = ModelFiles.OpenRead(path, "weight file"))
        {
            fileLength = fs.Length;
            if (fileLength != stamp.Length)
                throw new WeightFileException($"{path} changed while it was being opened ({stamp.Length} bytes, then {fileLength}). Do not modify model files while PixArtSharp runs.");
            if (fileLength < 8)
                throw Corrupt(path, $"it is {fileLength} bytes long, shorter than the 8-byte header length");
            Span<byte> lenBytes = stackalloc byte[8];
            fs.ReadExactly(lenBytes);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
            if (headerLength > MaxHeaderBytes)
                throw Corrupt(path, $"its header claims {headerLength} bytes, more than the {MaxHeaderBytes} the format allows");
            if ((long)headerLength > fileLength - 8)
                throw Corrupt(path, $"its header claims {headerLength} bytes but only {fileLength - 8} follow (the file is truncated)");
            header = new byte[headerLength];
            fs.ReadExactly(header);
        }
        long dataStart = 8 + header.LongLength;
        var (tensors, metadata) = ParseHeader(path, header, fileLength - dataStart);
        return new SafeTensorsFile(path, stamp, dataStart, tensors, metadata);
    }

    private static (Dictionary<string, SafeTensorInfo>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        // The format requires the header to start with '{' (trailing space padding is allowed).
        if (header.Length == 0 || header[0] != (byte)'{')
            throw Corrupt(path, "its JSON header does not start with '{'");
        // System.Text.Json defers UTF-8 checks inside strings to GetString (which would then throw
        // InvalidOperationException): check the whole header up front instead.
        if (!Utf8.IsValid(header))
            throw Corrupt(path, "its JSON header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Corrupt(path, $"its JSON header is malformed ({e.Message})");
        }
        var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw Corrupt(path, "its JSON header is not an object");
            bool sawMetadata = false;
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (sawMetadata)
                        throw Corrupt(path, "its __metadata__ appears twice in the header");
                    sawMetadata = true;
                    if (prop.Value.ValueKind == JsonValueKind.Null) continue; // the reference reads null as "no metadata"
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw Corrupt(path, "its __metadata__ is not an object of strings");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw Corrupt(path, $"its __metadata__ entry '{m.Name}' is not a string");
                        if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                            throw Corrupt(path, $"its __metadata__ entry '{m.Name}' appears twice");
                    }
                    continue;
                }
                if (tensors.ContainsKey(prop.Name))
                    throw Corrupt(path, $"tensor '{prop.Name}' appears twice in the header");
                tensors[prop.Name] = ParseEntry(path, prop.Name, prop.Value, dataLength);
            }
        }
        // Offsets must tile the data area exactly: in order, without overlaps or holes.
        long expected = 0;
        string? last = null;
        foreach (var t in tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (t.Begin < expected)
                throw Corrupt(path, $"tensor '{t.Name}' (bytes {t.Begin}–{t.End}) overlaps tensor '{last}' (which ends at {expected})");
            if (t.Begin > expected)
                throw Corrupt(path, $"bytes {expected}–{t.Begin} before tensor '{t.Name}' belong to no tensor");
            expected = t.End;
            last = t.Name;
        }
        if (expected != dataLength)
            throw Corrupt(path, last == null
                ? $"its data area is {dataLength} bytes but it lists no tensors"
                : $"its data area is {dataLength} bytes but the tensors end at {expected} (after tensor '{last}')");
        return (tensors, metadata);
    }

    private static SafeTensorInfo ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw Corrupt(path, $"the header entry of tensor '{name}' is not an object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Corrupt(path, $"tensor '{name}' has no dtype");
        string dtype = dt.GetString()!;
        if (!DTypes.TryGetValue(dtype, out var info))
            throw Corrupt(path, $"tensor '{name}' has dtype '{dtype}', which PixArtSharp does not read (known: {string.Join(", ", DTypes.Keys)})");
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw Corrupt(path, $"tensor '{name}' has no shape");
        var shape = new long[sh.GetArrayLength()];
        long numel = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0)
                throw Corrupt(path, $"tensor '{name}' has a shape entry that is not a non-negative integer");
            shape[i++] = v;
            try { numel = checked(numel * v); }
            catch (OverflowException) { throw Corrupt(path, $"tensor '{name}' has a shape whose size overflows"); }
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Corrupt(path, $"tensor '{name}' has no data_offsets [begin, end]");
        // TryGetInt64 throws (rather than returning false) on a non-number, so check the kind first.
        if (off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Corrupt(path, $"tensor '{name}' has data_offsets {off.GetRawText()}, not two integers 0 ≤ begin ≤ end");
        if (end > dataLength)
            throw Corrupt(path, $"tensor '{name}' ends at byte {end} of the data area, which has only {dataLength} bytes (the file is truncated)");
        long bytes;
        try { bytes = checked(numel * info.Size); }
        catch (OverflowException) { throw Corrupt(path, $"tensor '{name}' has a shape whose size overflows"); }
        if (end - begin != bytes)
            throw Corrupt(path, $"tensor '{name}' has {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {bytes}");
        foreach (var p in e.EnumerateObject())
            if (p.Name is not ("dtype" or "shape" or "data_offsets"))
                throw Corrupt(path, $"tensor '{name}' has an unknown header field '{p.Name}'");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    /// <summary>
    /// The tensor as stored (its file dtype, on the CPU), sharing the file's pages. Read-only in practice:
    /// the mapping is private, so a write would copy the page and never reach the file. The view is only valid
    /// while the file keeps its length: see the class summary, and <see cref="LoadCopy"/> for a process-owned copy.
    /// </summary>
    public Tensor Load(string name)
    {
        var info = Find(name);
        var (type, size) = DTypes[info.DType];
        long absolute = DataStart + info.Begin;
        long numel = info.ByteLength / size;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            // The header was validated against the file seen at Open; a file replaced or truncated since
            // would be mapped past its end (SIGBUS on first touch), so refuse it.
            CheckUnchanged(name);
            if (absolute % size != 0)
                return ReadCopy(info, type);
            if (!_maps.TryGetValue(type, out var map))
            {
                // The mapping belongs to this file object (freed in Dispose), not to whatever dispose scope the
                // first Load happens in: a scope ending must not unmap the weights that later loads view.
                map = torch.from_file(FilePath, shared: false, size: FileLength / size, dtype: type).DetachFromDisposeScope();
                _maps[type] = map;
            }
            using var flat = map.narrow(0, absolute / size, numel);
            return flat.view(info.Shape);
        }
    }

    /// <summary>
    /// The tensor as stored, copied into memory the process owns (read(2), no mapping): a later truncation or
    /// rewrite of the file cannot touch it. A file that is shorter than at Open by the time its bytes are read is a
    /// <see cref="WeightFileException"/> naming it.
    /// </summary>
    public Tensor LoadCopy(string name)
    {
        var info = Find(name);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            CheckUnchanged(name);
            return ReadCopy(info, DTypes[info.DType].Type);
        }
    }

    private SafeTensorInfo Find(string name) =>
        _tensors.TryGetValue(name, out var info) ? info : throw new WeightFileException($"{FilePath}: no tensor named '{name}'.");

    /// <summary>Throws a <see cref="WeightFileException"/> naming the file when its length or modification time is not what it was at Open.</summary>
    public void CheckUnchanged(string? tensor = null)
    {
        var now = FileStamp.Of(FilePath);
        if (now == Stamp) return;
        throw new WeightFileException($"{FilePath} changed while it was open ({FileStamp.Describe(Stamp, now)})" +
            $"{(tensor is null ? "" : $"; cannot read tensor '{tensor}'")}. Do not modify model files while PixArtSharp runs; load the model again.");
    }

    /// <summary>Reads a tensor's bytes with read(2) into a new tensor (misaligned tensors, and <see cref="LoadCopy"/>).</summary>
    private Tensor ReadCopy(SafeTensorInfo info, ScalarType type)
    {
        var t = torch.empty(info.Shape, type);
        try
        {
            using var fs = new FileStream(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
            fs.Position = DataStart + info.Begin;
            ReadInto(fs, t, info.ByteLength);
            return t;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            t.Dispose();
            throw new WeightFileException($"{FilePath}: cannot read tensor '{info.Name}' ({e.Message}). The file changed or became unreadable while it was open; load the model again.", e);
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes into the tensor's storage.</summary>
    private static void ReadInto(FileStream fs, Tensor t, long count)
    {
        if (count == 0) return;
        // TorchSharp's byte view of a CPU tensor; its length is checked against the header's byte count.
        var span = t.bytes;
        if (span.Length != count)
            throw new InvalidOperationException($"The tensor's storage has {span.Length} bytes, the file's entry {count}.");
        fs.ReadExactly(span);   // EndOfStreamException (an IOException) when the file shrank meanwhile
    }

    /// <summary>Releases this file's handles on the mapping; tensors already handed out keep it alive.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var m in _maps.Values) m.Dispose();
            _maps.Clear();
        }
    }

    private static WeightFileException Corrupt(string path, string what) =>
        new($"{path} is not a valid safetensors file: {what}. Download the file again (or re-save it with safetensors).");
}
