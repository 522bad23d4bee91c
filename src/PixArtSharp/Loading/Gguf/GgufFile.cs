using System.Buffers.Binary;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading.Gguf;

/// <summary>GGUF metadata value types (gguf.h <c>enum gguf_type</c>).</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8,
    Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One metadata value: a scalar (byte, sbyte, ushort, short, uint, int, float, bool, string, ulong, long, double as
/// <see cref="Value"/>) or an array (<see cref="Value"/> is an <c>object[]</c> of such values, possibly arrays).
/// </summary>
internal sealed record GgufValue(GgufValueType Type, object Value, GgufValueType? ElementType = null)
{
    public bool IsInteger => Type is GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.UInt16 or GgufValueType.Int16
        or GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.UInt64 or GgufValueType.Int64;

    public bool IsFloat => Type is GgufValueType.Float32 or GgufValueType.Float64;

    /// <summary>An integer value; null for other types or a u64 above long.MaxValue.</summary>
    public long? AsInt64() => Value switch
    {
        byte v => v,
        sbyte v => v,
        ushort v => v,
        short v => v,
        uint v => v,
        int v => v,
        long v => v,
        ulong v when v <= long.MaxValue => (long)v,
        _ => null,
    };

    public double? AsDouble() => Value switch { float f => f, double d => d, _ => IsInteger ? AsInt64() : null };

    public string? AsString() => Value as string;

    public override string ToString() => Value is object[] a ? $"[{ElementType} × {a.Length}]" : Value.ToString() ?? "";
}

/// <summary>One entry of the tensor table.</summary>
/// <param name="Dims">ggml's ne: the dimensions innermost first, as stored.</param>
/// <param name="Offset">bytes from the start of the data area (a multiple of the alignment).</param>
internal sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type, long Offset)
{
    /// <summary>The torch shape: the dimensions outermost first.</summary>
    public long[] Shape => Dims.Reverse().ToArray();
    public long NumElements => Dims.Aggregate(1L, (a, b) => a * b);
    public long ByteLength => GgmlTypes.ByteLength(Type, NumElements);
}

/// <summary>
/// Reads the GGUF format (specification v3, little endian; v2 has the same layout): header, metadata key/values,
/// tensor table, then the data area at the first multiple of <c>general.alignment</c> (default 32). Every count,
/// length and offset is checked against the file's size before anything is allocated from it, so a corrupt or hostile
/// file is a <see cref="GgufFileException"/> naming the problem, never a huge allocation or a read past the end.
/// Tensors stay encoded: <see cref="LoadTensor"/> hands out <see cref="QuantizedTensor"/>s whose planes are views of one
/// memory mapping of the file per element type (<c>torch.from_file</c>, as <see cref="SafeTensorsFile"/> does).
/// </summary>
internal sealed class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747;        // "GGUF" read as a little-endian u32
    public const int DefaultAlignment = 32;
    /// <summary>GGML_MAX_DIMS.</summary>
    public const int MaxDims = 4;
    private const int MaxArrayDepth = 8;
    /// <summary>Caps on one metadata value, far above any real file's (a tokenizer's arrays hold ≤ 256 k entries, its
    /// strings a few KB): within them a value costs memory in proportion to the file bytes it reads.</summary>
    public const int MaxArrayLength = 1 << 24, MaxStringBytes = 1 << 26;

    private readonly Dictionary<string, GgufTensorInfo> _tensors;
    private readonly Dictionary<ScalarType, Tensor> _maps = new();
    private readonly Lock _lock = new();
    private bool _disposed;

    public string FilePath { get; }
    public long FileLength { get; }
    public uint Version { get; }
    public int Alignment { get; }
    public long DataStart { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    /// <summary>The tensor table in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> TensorList { get; }
    public IReadOnlyDictionary<string, GgufTensorInfo> Tensors => _tensors;

    private GgufFile(string path, long length, uint version, int alignment, long dataStart,
                     Dictionary<string, GgufValue> metadata, List<GgufTensorInfo> tensors)
    {
        FilePath = path;
        FileLength = length;
        Version = version;
        Alignment = alignment;
        DataStart = dataStart;
        Metadata = metadata;
        TensorList = tensors;
        _tensors = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>general.architecture, or null.</summary>
    public string? Architecture => Metadata.TryGetValue("general.architecture", out var v) ? v.AsString() : null;

    /// <summary>Opens and validates a file; reads only the header.</summary>
    public static GgufFile Open(string path)
    {
        if (!File.Exists(path))
            throw new ModelNotFoundException($"GGUF file not found: {path}.");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 16);
        var r = new HeaderReader(path, fs);
        return Parse(path, r);
    }

    private static GgufFile Parse(string path, HeaderReader r)
    {
        long length = r.Length;
        if (length < 4)
            throw Bad(path, $"it is {length} bytes long, too short to be a GGUF file", NotGgufFix);
        uint magic = r.U32("the magic");
        if (magic != Magic)
        {
            var head = BitConverter.GetBytes(magic);
            string shown = head.All(b => b is >= 0x20 and < 0x7F) ? $"'{Encoding.ASCII.GetString(head)}'" : Convert.ToHexString(head);
            throw Bad(path, $"it does not start with the GGUF magic 'GGUF' (it starts with {shown})", NotGgufFix);
        }
        uint version = r.U32("the version");
        if (version is not (2 or 3))
        {
            if (BinaryPrimitives.ReverseEndianness(version) is 2 or 3)
                throw Bad(path, "it is a big-endian GGUF file", "Use a little-endian GGUF file (the usual kind, e.g. from city96/t5-v1_1-xxl-encoder-gguf)");
            if (version == 1)
                throw Bad(path, "it is GGUF version 1 (32-bit counts), which predates the current format", "Convert it again with a current llama.cpp/gguf-py");
            throw Bad(path, $"its version is {version}; PixArtSharp reads GGUF versions 2 and 3", "Use a GGUF v3 file (convert it with a current llama.cpp/gguf-py)");
        }
        ulong nTensors = r.U64("the tensor count");
        ulong nKv = r.U64("the metadata count");
        // Smallest possible entries: a key/value is ≥ 8 (key length) + 4 (type) + 1 bytes; a tensor entry ≥ 8 + 4 + 8 + 4 + 8.
        if (nKv > (ulong)(r.Remaining / 13))
            throw Bad(path, $"its header claims {nKv} metadata entries, more than its {length} bytes can hold", TruncatedFix);
        if (nTensors > (ulong)(r.Remaining / 32))
            throw Bad(path, $"its header claims {nTensors} tensors, more than its {length} bytes can hold", TruncatedFix);

        var metadata = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
        for (ulong i = 0; i < nKv; i++)
        {
            string key = r.String($"the key of metadata entry {i}");
            var type = (GgufValueType)r.U32($"the type of metadata '{key}'");
            var value = r.Value(type, key, 0);
            if (!metadata.TryAdd(key, value))
                throw Bad(path, $"metadata key '{key}' appears twice", TruncatedFix);
        }

        int alignment = DefaultAlignment;
        if (metadata.TryGetValue("general.alignment", out var al))
        {
            if (al.Type != GgufValueType.UInt32)
                throw Bad(path, $"general.alignment is a {al.Type}, not a UInt32", "Convert the model again with llama.cpp/gguf-py");
            uint a = (uint)al.Value;
            if (a == 0 || (a & (a - 1)) != 0 || a > 1 << 20)
                throw Bad(path, $"general.alignment is {a}, not a power of two (up to 2^20)", "Convert the model again with llama.cpp/gguf-py");
            alignment = (int)a;
        }

        var tensors = new List<GgufTensorInfo>();      // grows as entries are read: no allocation from the count
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (ulong i = 0; i < nTensors; i++)
        {
            string name = r.String($"the name of tensor {i}");
            if (!names.Add(name))
                throw Bad(path, $"tensor '{name}' appears twice in its tensor table", TruncatedFix);
            uint nDims = r.U32($"the dimension count of tensor '{name}'");
            if (nDims is 0 or > MaxDims)
                throw Bad(path, $"tensor '{name}' has {nDims} dimensions; GGUF tensors have 1 to {MaxDims}", TruncatedFix);
            var dims = new long[nDims];
            long numel = 1;
            for (int d = 0; d < nDims; d++)
            {
                ulong v = r.U64($"dimension {d} of tensor '{name}'");
                if (v == 0 || v > long.MaxValue)
                    throw Bad(path, $"tensor '{name}' has dimension {d} = {v}", TruncatedFix);
                dims[d] = (long)v;
                if (numel > (1L << 50) / dims[d])
                    throw Bad(path, $"tensor '{name}' has dimensions [{string.Join(", ", dims.Take(d + 1))}] whose size overflows", TruncatedFix);
                numel *= dims[d];
            }
            uint typeNumber = r.U32($"the type of tensor '{name}'");
            var type = (GgmlType)typeNumber;
            if (!GgmlTypes.IsKnown(type))
                throw Bad(path, $"tensor '{name}' has ggml type number {typeNumber}, which is not a known ggml type (supported: {GgmlTypes.SupportedList})",
                    "Re-quantize the model to one of the supported types");
            if (dims[0] % GgmlTypes.BlockSize(type) != 0)
                throw Bad(path, $"tensor '{name}' is {type} but its innermost dimension {dims[0]} is not a multiple of the block size {GgmlTypes.BlockSize(type)}", TruncatedFix);
            ulong offset = r.U64($"the offset of tensor '{name}'");
            if (offset > long.MaxValue || offset % (ulong)alignment != 0)
                throw Bad(path, $"tensor '{name}' has data offset {offset}, not a multiple of the alignment {alignment}", TruncatedFix);
            tensors.Add(new GgufTensorInfo(name, dims, type, (long)offset));
        }

        long headerEnd = r.Position;
        long dataStart = (headerEnd + alignment - 1) / alignment * alignment;
        if (dataStart > length)
            throw Bad(path, $"its header ends at byte {headerEnd} and its data area would start at {dataStart}, past the end of the file ({length} bytes; the file is truncated)", TruncatedFix);
        long dataLength = length - dataStart;
        foreach (var t in tensors)
        {
            long end = t.Offset + t.ByteLength;      // both < 2^63 / 2: no overflow (numel < 2^50, offset checked below)
            if (t.Offset > dataLength || end > dataLength)
                throw Bad(path, $"tensor '{t.Name}' ({GgmlTypes.Name(t.Type)} [{string.Join(", ", t.Shape)}], {t.ByteLength} bytes at data offset {t.Offset}) ends past the end of the file: the data area has {dataLength} bytes (the file is truncated)", TruncatedFix);
        }
        GgufTensorInfo? prev = null;
        foreach (var t in tensors.OrderBy(t => t.Offset))
        {
            if (prev != null && t.Offset < prev.Offset + prev.ByteLength)
                throw Bad(path, $"tensor '{t.Name}' (at data offset {t.Offset}) overlaps tensor '{prev.Name}' (bytes {prev.Offset}–{prev.Offset + prev.ByteLength})", TruncatedFix);
            prev = t;
        }
        return new GgufFile(path, length, version, alignment, dataStart, metadata, tensors);
    }

    /// <summary>
    /// The tensor, still encoded, on the CPU: its block fields are views of the file's memory mapping (nothing is
    /// read until decoded). A type the decoder does not know is an error naming the tensor and the supported types.
    /// </summary>
    public QuantizedTensor LoadTensor(string name)
    {
        if (!_tensors.TryGetValue(name, out var info))
            throw new GgufFileException($"{FilePath}: no tensor named '{name}'.");
        if (!GgmlTypes.IsSupported(info.Type))
            throw new GgufFileException($"{FilePath}: tensor '{name}' is {GgmlTypes.Name(info.Type)}, a ggml type PixArtSharp does not decode (supported: {GgmlTypes.SupportedList}). Use a GGUF file quantized to one of those (e.g. Q8_0, Q5_K_M, Q4_K_M).");
        long absolute = DataStart + info.Offset;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            // The header was checked against the length seen at Open; a file truncated since would be mapped past its
            // end (SIGBUS on first touch), so refuse it.
            long now = CurrentLength(FilePath);
            if (now != FileLength)
                throw new GgufFileException($"{FilePath} changed while it was open (it was {FileLength} bytes, now {now}); cannot read tensor '{name}'. Do not modify model files while PixArtSharp runs.");
            return QuantizedTensor.FromRegion(name, info.Type, info.Shape, t => Region(t, absolute, info.ByteLength));
        }
    }

    /// <summary>A tensor decoded to <paramref name="dtype"/> on the CPU (a new tensor).</summary>
    public Tensor Dequantize(string name, ScalarType dtype = ScalarType.Float32)
    {
        using var q = LoadTensor(name);
        return q.Dequantize(dtype);
    }

    /// <summary>Bytes [absolute, absolute + length) as a 1-D tensor of <paramref name="type"/>: a view of the mapping.</summary>
    private Tensor Region(ScalarType type, long absolute, long length)
    {
        int size = QuantizedTensor.ElementSize(type);
        if (absolute % size != 0)
        {
            // An alignment below the element size (legal, never written by llama.cpp): copy instead of viewing.
            var copy = torch.empty(length / size, type);
            using var fs = new FileStream(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read);
            fs.Position = absolute;
            fs.ReadExactly(copy.bytes);
            return copy;
        }
        if (!_maps.TryGetValue(type, out var map))
        {
            // Owned by this file object (freed in Dispose); views handed out keep the mapping alive.
            map = torch.from_file(FilePath, shared: false, size: FileLength / size, dtype: type).DetachFromDisposeScope();
            _maps[type] = map;
        }
        return map.narrow(0, absolute / size, length / size);
    }

    private static long CurrentLength(string path)
    {
        var info = new FileInfo(path);
        try
        {
            if (info.LinkTarget != null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) info = target;
            return info.Length;
        }
        catch (IOException) { return -1; }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var m in _maps.Values) m.Dispose();
            _maps.Clear();
        }
    }

    private const string NotGgufFix = "Pass a .gguf file (e.g. from city96/t5-v1_1-xxl-encoder-gguf); safetensors text encoders go in the model folder's text_encoder/";
    private const string TruncatedFix = "The file is corrupt or incomplete; download it again";

    internal static GgufFileException Bad(string path, string what, string fix) =>
        new($"{path} is not a usable GGUF file: {what}. {fix}.");

    /// <summary>Reads the header with every length checked against what is left of the file.</summary>
    private sealed class HeaderReader(string path, Stream stream)
    {
        private readonly byte[] _buf = new byte[8];
        public long Length { get; } = stream.Length;
        public long Position { get; private set; }
        public long Remaining => Length - Position;

        private ReadOnlySpan<byte> Take(int n, string what)
        {
            if (n > Remaining)
                throw Bad(path, $"the file ends inside its header, at byte {Length}, while reading {what} (the file is truncated)", TruncatedFix);
            stream.ReadExactly(_buf, 0, n);
            Position += n;
            return _buf.AsSpan(0, n);
        }

        public byte U8(string what) => Take(1, what)[0];
        public ushort U16(string what) => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, what));
        public uint U32(string what) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, what));
        public ulong U64(string what) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, what));

        public string String(string what)
        {
            ulong n = U64(what);
            if (n > (ulong)Remaining)
                throw Bad(path, $"{what} claims a string of {n} bytes but only {Remaining} bytes of the file follow (the file is truncated)", TruncatedFix);
            if (n > MaxStringBytes)
                throw Bad(path, $"{what} claims a string of {n} bytes, more than the {MaxStringBytes} PixArtSharp reads", TruncatedFix);
            var bytes = new byte[(int)n];
            stream.ReadExactly(bytes);
            Position += bytes.Length;
            try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes); }
            catch (DecoderFallbackException) { throw Bad(path, $"{what} is not valid UTF-8", TruncatedFix); }
        }

        private static int MinSize(GgufValueType t) => t switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.String or GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
            GgufValueType.Array => 12,
            _ => 1,
        };

        public GgufValue Value(GgufValueType type, string key, int depth)
        {
            string what = $"the value of metadata '{key}'";
            switch (type)
            {
                case GgufValueType.UInt8: return new(type, U8(what));
                case GgufValueType.Int8: return new(type, (sbyte)U8(what));
                case GgufValueType.UInt16: return new(type, U16(what));
                case GgufValueType.Int16: return new(type, (short)U16(what));
                case GgufValueType.UInt32: return new(type, U32(what));
                case GgufValueType.Int32: return new(type, (int)U32(what));
                case GgufValueType.Float32: return new(type, BitConverter.Int32BitsToSingle((int)U32(what)));
                case GgufValueType.Bool:
                    byte b = U8(what);
                    if (b > 1) throw Bad(path, $"metadata '{key}' is a bool stored as {b}, not 0 or 1", TruncatedFix);
                    return new(type, b == 1);
                case GgufValueType.String: return new(type, String(what));
                case GgufValueType.UInt64: return new(type, U64(what));
                case GgufValueType.Int64: return new(type, (long)U64(what));
                case GgufValueType.Float64: return new(type, BitConverter.Int64BitsToDouble((long)U64(what)));
                case GgufValueType.Array:
                    if (depth >= MaxArrayDepth)
                        throw Bad(path, $"metadata '{key}' nests arrays more than {MaxArrayDepth} deep", TruncatedFix);
                    var et = (GgufValueType)U32($"the element type of metadata '{key}'");
                    if (!Enum.IsDefined(et))
                        throw Bad(path, $"metadata '{key}' is an array of unknown value type {(uint)et}", TruncatedFix);
                    ulong count = U64($"the length of metadata array '{key}'");
                    if (count > (ulong)(Remaining / MinSize(et)))
                        throw Bad(path, $"metadata array '{key}' claims {count} elements, more than the {Remaining} bytes left in the file can hold (the file is truncated)", TruncatedFix);
                    if (count > MaxArrayLength)
                        throw Bad(path, $"metadata array '{key}' claims {count} elements, more than the {MaxArrayLength} PixArtSharp reads", TruncatedFix);
                    var items = new object[count];
                    for (ulong i = 0; i < count; i++) items[i] = Value(et, key, depth + 1).Value;
                    return new(type, items, et);
                default:
                    throw Bad(path, $"metadata '{key}' has unknown value type {(uint)type}", TruncatedFix);
            }
        }
    }
}
