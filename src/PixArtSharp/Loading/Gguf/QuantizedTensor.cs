using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// A tensor held in a ggml block format, decoded on demand. Holds the block fields as typed planes
/// (<see cref="GgmlDequant.Layout"/>), each [blocks, width]: views into the file's memory mapping on the CPU (no copy:
/// the memory it costs is the file's pages), or compact copies on another device. <see cref="Dequantize(ScalarType)"/> returns
/// the whole tensor in a compute dtype (fp32 arithmetic as dequant.py, then one cast); the caller frees it after use.
/// </summary>
internal sealed class QuantizedTensor : IDisposable
{
    private readonly Tensor[] _planes;
    /// <summary>CPU only: the blocks as contiguous uint8 (the same bytes as the planes), for <see cref="GgmlCpuDecode"/>.</summary>
    private readonly Tensor? _raw;

    public string Name { get; }
    public GgmlType Type { get; }
    /// <summary>The torch shape (outermost first; GGUF lists the dimensions innermost first).</summary>
    public long[] Shape { get; }
    public long NumElements { get; }
    /// <summary>Bytes of the encoded blocks.</summary>
    public long ByteLength => GgmlTypes.ByteLength(Type, NumElements);
    public Device device => _planes[0].device;
    internal IReadOnlyList<Tensor> Planes => _planes;
    /// <summary>The encoded blocks as uint8, for the CPU decoder's types on the CPU; else null.</summary>
    internal Tensor? Raw => _raw;

    internal QuantizedTensor(string name, GgmlType type, long[] shape, Tensor[] planes, Tensor? raw = null)
    {
        Name = name;
        Type = type;
        Shape = shape;
        NumElements = shape.Aggregate(1L, (a, b) => a * b);
        // Owned by this object (freed in Dispose), not by whatever dispose scope it was made in.
        foreach (var p in planes) p.DetachFromDisposeScope();
        _planes = planes;
        _raw = raw?.DetachFromDisposeScope();
    }

    /// <summary>Maps the encoded bytes in now (<see cref="MappedMemory.Populate"/>) if they are a CPU file view.</summary>
    internal void Populate()
    {
        if (_raw is not null) MappedMemory.Populate(_raw);
    }

    /// <summary>
    /// Cuts the planes out of typed 1-D views of one tensor's bytes. <paramref name="region"/> gives the bytes
    /// reinterpreted as an element type (each a view of the same bytes, its length the byte count / element size).
    /// </summary>
    internal static QuantizedTensor FromRegion(string name, GgmlType type, long[] shape, Func<ScalarType, Tensor> region)
    {
        long numel = shape.Aggregate(1L, (a, b) => checked(a * b));
        int bs = GgmlTypes.BlockSize(type), ts = GgmlTypes.TypeSize(type);
        long nb = numel / bs;
        var layout = GgmlDequant.Layout(type);
        var planes = new Tensor[layout.Length];
        for (int i = 0; i < layout.Length; i++)
        {
            var pl = layout[i];
            int size = ElementSize(pl.Type);
            using var flat = region(pl.Type);                                                   // [bytes / size]
            using var blocks = flat.view(nb, ts / size);                                        // [nb, ts / size]
            planes[i] = blocks.narrow(1, pl.Offset / size, pl.Length / size);                   // [nb, width]
        }
        return new QuantizedTensor(name, type, shape, planes, GgmlCpuDecode.Supports(type) ? region(ScalarType.Byte) : null);
    }

    /// <summary>A tensor from encoded bytes held in memory (copied). Tests and converters.</summary>
    public static QuantizedTensor FromBytes(string name, GgmlType type, long[] shape, ReadOnlySpan<byte> bytes)
    {
        if (!GgmlTypes.IsSupported(type))
            throw new NotSupportedException($"ggml type {GgmlTypes.Name(type)} is not supported; supported: {GgmlTypes.SupportedList}.");
        long numel = shape.Aggregate(1L, (a, b) => checked(a * b));
        if (shape.Length == 0 || shape[^1] % GgmlTypes.BlockSize(type) != 0)
            throw new ArgumentException($"The innermost dimension of a {type} tensor must be a multiple of {GgmlTypes.BlockSize(type)}.", nameof(shape));
        if (bytes.Length != GgmlTypes.ByteLength(type, numel))
            throw new ArgumentException($"{type} [{string.Join(", ", shape)}] needs {GgmlTypes.ByteLength(type, numel)} bytes, not {bytes.Length}.", nameof(bytes));
        var copy = bytes.ToArray();
        return FromRegion(name, type, shape, t =>
        {
            var r = torch.empty(copy.Length / ElementSize(t), t);
            copy.CopyTo(r.bytes);
            return r;
        });
    }

    internal static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Byte or ScalarType.Int8 => 1,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        _ => 8,
    };

    /// <summary>The whole tensor [Shape] in <paramref name="dtype"/> on this tensor's device (a new tensor the caller owns).</summary>
    public Tensor Dequantize(ScalarType dtype) => Dequantize(dtype, allowCpuKernel: true);

    /// <param name="allowCpuKernel">false: the libtorch tensor ops even where the C# CPU decoder applies (tests compare the two).</param>
    public Tensor Dequantize(ScalarType dtype, bool allowCpuKernel)
    {
        using var scope = NewDisposeScope();
        // The C# decoder reads the raw bytes on the CPU; planes moved elsewhere (e.g. by a module-wide .to(device))
        // decode with the tensor ops where they are.
        if (allowCpuKernel && UsesCpuKernel(dtype))
            return GgmlCpuDecode.Decode(Type, _raw!, dtype).reshape(Shape).MoveToOuterDisposeScope();
        // F32/F16/BF16 convert straight to the target (what dequant.py does for the torch-compatible types).
        Tensor values = Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 && dtype != ScalarType.Float32
            ? GgmlDequant.Cast(_planes[0], dtype)
            : GgmlDequant.DecodeBlocks(Type, _planes);                                  // [blocks, block size] fp32
        return values.reshape(Shape).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>F.linear(x, W)</c> for this 2-D weight W [out, in] decoded to <paramref name="dtype"/>. Where the C# CPU
    /// decoder applies, W is decoded a tile of output rows at a time and each tile multiplies while it is still in
    /// the cache (<see cref="GgmlTiledLinear"/>), so the decoded matrix never round-trips through memory nor exists
    /// whole; elsewhere the whole matrix is decoded and freed after use. The decoded values are the same; the tiles'
    /// products sum in another order than one whole-matrix GEMM (at most one step of the dtype apart).
    /// </summary>
    /// <param name="x">[…, in] in <paramref name="dtype"/></param>
    /// <param name="tileRows">Output rows per tile (0: <see cref="GgmlTiledLinear.DefaultTileRows"/>); tests vary it.</param>
    /// <returns>[…, out]</returns>
    public Tensor Linear(Tensor x, ScalarType dtype, long tileRows = 0)
    {
        if (Shape.Length != 2)
            throw new InvalidOperationException($"{Name}: Linear needs a 2-D weight, not [{string.Join(", ", Shape)}].");
        if (!UsesCpuKernel(dtype))
        {
            using var w = Dequantize(dtype);
            return F.linear(x, w);
        }
        return GgmlTiledLinear.Forward(Type, _raw!, Shape[0], Shape[1], x, dtype, tileRows);
    }

    /// <summary>Whether <see cref="Dequantize(ScalarType)"/> goes through the C# CPU decoder.</summary>
    private bool UsesCpuKernel(ScalarType dtype) =>
        _raw is not null && _raw.device_type == DeviceType.CPU && _planes[0].device_type == DeviceType.CPU
        && dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16;

    /// <summary>
    /// Rows of a 2-D tensor ([rows, cols], one row = cols / block size whole blocks): only the selected blocks are
    /// decoded. The quantized embedding's lookup. Returns [n, cols] in <paramref name="dtype"/>.
    /// </summary>
    public Tensor DequantizeRows(Tensor rowIndex, ScalarType dtype)
    {
        if (Shape.Length != 2)
            throw new InvalidOperationException($"{Name}: DequantizeRows needs a 2-D tensor, not [{string.Join(", ", Shape)}].");
        using var scope = NewDisposeScope();
        long rows = Shape[0], cols = Shape[1], bpr = cols / GgmlTypes.BlockSize(Type);
        var idx = rowIndex.to(ScalarType.Int64, device).reshape(-1);
        var picked = _planes.Select(p => p.reshape(rows, bpr, p.shape[1]).index_select(0, idx).reshape(-1, p.shape[1])).ToArray();
        Tensor values = Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 && dtype != ScalarType.Float32
            ? GgmlDequant.Cast(picked[0], dtype)
            : GgmlDequant.DecodeBlocks(Type, picked);
        return values.reshape(idx.shape[0], cols).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>The same tensor on <paramref name="target"/>: compact copies of the planes (this one when already there).</summary>
    public QuantizedTensor To(Device target)
    {
        if (device.type == target.type && (target.index < 0 || device.index == target.index))
            return new QuantizedTensor(Name, Type, Shape, _planes.Select(p => p.alias()).ToArray(), _raw?.alias());
        return new QuantizedTensor(Name, Type, Shape, _planes.Select(p => p.to(target)).ToArray());
    }

    public void Dispose()
    {
        foreach (var p in _planes) p.Dispose();
        _raw?.Dispose();
    }
}
