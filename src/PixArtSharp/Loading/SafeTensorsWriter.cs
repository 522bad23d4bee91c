using System.Buffers.Binary;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>
/// Writes the safetensors format as the reference writer does: tensors sorted by descending element size then
/// name (so every offset stays aligned for zero-copy reading), the header padded with spaces to 8 bytes.
/// Written to a temporary file and renamed, so a failed write never leaves a half file behind.
/// </summary>
internal static class SafeTensorsWriter
{
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (tensors.ContainsKey("__metadata__"))
            throw new ArgumentException("A tensor cannot be named '__metadata__': the format reserves that key.", nameof(tensors));
        var order = tensors
            .OrderByDescending(kv => kv.Value.ElementSize)
            .ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .ToList();
        var header = new Dictionary<string, object>();
        if (metadata != null) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var (name, t) in order)
        {
            long bytes = t.NumberOfElements * t.ElementSize;
            header[name] = new Dictionary<string, object>
            {
                ["dtype"] = SafeTensorsFile.ToDTypeName(t.dtype),
                ["shape"] = t.shape,
                ["data_offsets"] = new[] { offset, offset + bytes },
            };
            offset += bytes;
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padded = (json.Length + 7) / 8 * 8;
        var headerBytes = new byte[padded];
        Array.Fill(headerBytes, (byte)' ');
        json.CopyTo(headerBytes, 0);

        string tmp = path + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
                fs.Write(len);
                fs.Write(headerBytes);
                foreach (var (_, t) in order)
                {
                    using var cpu = t.cpu();
                    using var c = cpu.contiguous();
                    fs.Write(c.bytes);
                }
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            throw;
        }
    }
}
