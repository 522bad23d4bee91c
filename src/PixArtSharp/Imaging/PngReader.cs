using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace PixArtSharp.Imaging;

/// <summary>
/// Reads back what <see cref="PngWriter"/> writes: the text metadata of any PNG, and the pixels of 8-bit RGB,
/// non-interlaced PNGs (all five filter types). Not a general decoder: untrusted images of other kinds belong to
/// a real image library. Every length is checked against the file, and CRCs are verified, so a corrupt file is an
/// <see cref="InvalidDataException"/> naming it, never a crash.
/// <para>The file comes from users (<c>--from-png</c> reads a PNG someone sent): it must be a regular file of at most
/// <see cref="MaxFileBytes"/> (else a <see cref="UserFileException"/>, before anything is read), chunks are read one
/// at a time, a text chunk longer than <see cref="MaxTextChunkBytes"/> is refused from its length field before its
/// data is read, and reading the text skips the image data without reading it.</para>
/// </summary>
public static class PngReader
{
    /// <summary>Refuse images whose decoded rows would exceed this (1 GiB), whatever the header claims.</summary>
    public const long MaxDecodedBytes = 1L << 30;

    /// <summary>Refuse compressed text chunks that inflate past this (16 MiB).</summary>
    public const long MaxTextBytes = 16L << 20;

    /// <summary>PNG files larger than this (256 MiB, as <see cref="ImageReader.MaxFileBytes"/>) are refused before reading.</summary>
    public const long MaxFileBytes = ImageReader.MaxFileBytes;

    /// <summary>A tEXt, zTXt or iTXt chunk longer than this (1 MiB) is refused before its data is read: PixArtSharp's own are a few KB.</summary>
    public const long MaxTextChunkBytes = 1L << 20;

    private static bool IsText(string type) => type is "tEXt" or "zTXt" or "iTXt";

    /// <summary>The tEXt, zTXt and iTXt chunks, in file order, as (keyword, text).</summary>
    public static IReadOnlyList<(string Keyword, string Text)> ReadTextChunks(string path)
    {
        var result = new List<(string, string)>();
        foreach (var (type, data) in Chunks(path, IsText))
        {
            if (type == "tEXt") result.Add(ParseTEXt(path, data));
            else if (type == "zTXt") result.Add(ParseZTXt(path, data));
            else if (type == "iTXt") result.Add(ParseITXt(path, data));
        }
        return result;
    }

    /// <summary>Decodes an 8-bit RGB non-interlaced PNG into height × width × 3 bytes (HWC).</summary>
    public static (int Width, int Height, byte[] Rgb) DecodeRgb8(string path)
    {
        int width = 0, height = 0;
        bool sawHeader = false;
        using var idat = new MemoryStream();
        // Every chunk is read here (its CRC checked), since the pixels need most of the file anyway.
        foreach (var (type, data) in Chunks(path, _ => true))
        {
            if (type == "IHDR")
            {
                if (data.Length != 13) throw Bad(path, "its IHDR chunk is not 13 bytes");
                width = BinaryPrimitives.ReadInt32BigEndian(data);
                height = BinaryPrimitives.ReadInt32BigEndian(data.AsSpan(4));
                if (width < 1 || height < 1) throw Bad(path, $"its size {width}×{height} is not positive");
                if (data[8] != 8 || data[9] != 2)
                    throw new NotSupportedException($"{path}: only 8-bit RGB PNGs are read here (bit depth {data[8]}, colour type {data[9]}).");
                if (data[10] != 0 || data[11] != 0) throw Bad(path, "it uses an unknown compression or filter method");
                if (data[12] != 0) throw new NotSupportedException($"{path}: interlaced PNGs are not read here.");
                if ((long)height * (width * 3L + 1) > MaxDecodedBytes) throw Bad(path, $"its size {width}×{height} is too large");
                sawHeader = true;
            }
            else if (type == "IDAT")
            {
                if (!sawHeader) throw Bad(path, "IDAT comes before IHDR");
                idat.Write(data);
            }
        }
        if (!sawHeader) throw Bad(path, "it has no IHDR chunk");
        int stride = width * 3;
        var raw = new byte[(long)height * (stride + 1)];
        idat.Position = 0;
        try
        {
            using var z = new ZLibStream(idat, CompressionMode.Decompress);
            z.ReadExactly(raw);
        }
        catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
        {
            throw Bad(path, $"its image data is truncated or corrupt ({e.Message})");
        }

        var rgb = new byte[(long)height * stride];
        for (int y = 0; y < height; y++)
        {
            byte filter = raw[y * (stride + 1)];
            var src = raw.AsSpan(y * (stride + 1) + 1, stride);
            var row = rgb.AsSpan(y * stride, stride);
            ReadOnlySpan<byte> prior = y == 0 ? new byte[stride] : rgb.AsSpan((y - 1) * stride, stride);
            for (int i = 0; i < stride; i++)
            {
                int a = i >= 3 ? row[i - 3] : 0, b = prior[i], c = i >= 3 ? prior[i - 3] : 0;
                int predictor = filter switch
                {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) >> 1,
                    4 => PngWriter.Paeth(a, b, c),
                    _ => throw Bad(path, $"row {y} has unknown filter type {filter}"),
                };
                row[i] = (byte)(src[i] + predictor);
            }
        }
        return (width, height, rgb);
    }

    /// <summary>
    /// The chunks <paramref name="wanted"/> selects, up to IEND, each with its CRC checked; the others are skipped
    /// unread. The file is read chunk by chunk, each length checked against what is left of the file first.
    /// </summary>
    private static IEnumerable<(string Type, byte[] Data)> Chunks(string path, Func<string, bool> wanted)
    {
        using var fs = UserFiles.OpenRead(path, MaxFileBytes, "PNG file");
        long fileLength = fs.Length;
        Span<byte> head = stackalloc byte[8];
        if (fileLength < 8 || fs.Read(head) != 8 || !head.SequenceEqual(PngWriter.Signature))
            throw Bad(path, "it does not start with the PNG signature");
        var header = new byte[8];
        var crcBytes = new byte[4];
        long pos = 8;
        while (true)
        {
            if (pos + 12 > fileLength) throw Bad(path, "it ends without an IEND chunk (truncated)");
            fs.Position = pos;
            ReadExactly(fs, header, path);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header);
            string type = Encoding.ASCII.GetString(header, 4, 4);
            if (length > int.MaxValue || pos + 12 + length > fileLength)
                throw Bad(path, $"a chunk at byte {pos} claims {length} bytes, past the end of the file");
            if (type == "IEND" || wanted(type))
            {
                if (IsText(type) && length > MaxTextChunkBytes)
                    throw Bad(path, $"its {type} chunk at byte {pos} is {length:N0} bytes long; text chunks over {MaxTextChunkBytes:N0} bytes are refused");
                var typeAndData = new byte[4 + length];
                header.AsSpan(4, 4).CopyTo(typeAndData);
                ReadExactly(fs, typeAndData.AsMemory(4), path);
                ReadExactly(fs, crcBytes, path);
                if (Crc32.Compute(typeAndData) != BinaryPrimitives.ReadUInt32BigEndian(crcBytes))
                    throw Bad(path, $"chunk '{type}' at byte {pos} has a wrong CRC");
                if (type == "IEND") yield break;
                yield return (type, typeAndData[4..]);
            }
            pos += 12 + length;
        }
    }

    private static void ReadExactly(FileStream fs, Memory<byte> buffer, string path)
    {
        try { fs.ReadExactly(buffer.Span); }
        catch (EndOfStreamException) { throw Bad(path, "it is shorter than its chunks claim (it changed while being read)"); }
    }

    private static (string, string) ParseTEXt(string path, byte[] d)
    {
        int nul = Array.IndexOf(d, (byte)0);
        if (nul < 1) throw Bad(path, "a tEXt chunk has no keyword");
        return (Encoding.Latin1.GetString(d, 0, nul), Encoding.Latin1.GetString(d, nul + 1, d.Length - nul - 1));
    }

    private static (string, string) ParseZTXt(string path, byte[] d)
    {
        int nul = Array.IndexOf(d, (byte)0);
        if (nul < 1 || nul + 2 > d.Length || d[nul + 1] != 0) throw Bad(path, "a zTXt chunk is malformed");
        return (Encoding.Latin1.GetString(d, 0, nul), Encoding.Latin1.GetString(Inflate(path, d.AsSpan(nul + 2))));
    }

    private static (string, string) ParseITXt(string path, byte[] d)
    {
        int nul = Array.IndexOf(d, (byte)0);
        if (nul < 1 || nul + 3 > d.Length) throw Bad(path, "an iTXt chunk is malformed");
        string keyword = Encoding.Latin1.GetString(d, 0, nul);
        bool compressed = d[nul + 1] == 1;
        int lang = Array.IndexOf(d, (byte)0, nul + 3);
        int translated = lang < 0 ? -1 : Array.IndexOf(d, (byte)0, lang + 1);
        if (translated < 0) throw Bad(path, $"the iTXt chunk '{keyword}' is malformed");
        var body = d.AsSpan(translated + 1);
        try
        {
            var utf8 = new UTF8Encoding(false, throwOnInvalidBytes: true);
            return (keyword, utf8.GetString(compressed ? Inflate(path, body) : body));
        }
        catch (DecoderFallbackException) { throw Bad(path, $"the iTXt chunk '{keyword}' is not UTF-8"); }
    }

    private static byte[] Inflate(string path, ReadOnlySpan<byte> data)
    {
        try
        {
            using var z = new ZLibStream(new MemoryStream(data.ToArray()), CompressionMode.Decompress);
            using var o = new MemoryStream();
            var buf = new byte[81920];
            for (int n; (n = z.Read(buf)) > 0;)
            {
                // Metadata is small; a chunk that inflates past this is hostile (a zip bomb), not ours.
                if (o.Length + n > MaxTextBytes) throw Bad(path, $"a compressed text chunk inflates past {MaxTextBytes} bytes");
                o.Write(buf, 0, n);
            }
            return o.ToArray();
        }
        catch (InvalidDataException e) { throw Bad(path, $"a compressed text chunk is corrupt ({e.Message})"); }
    }

    private static InvalidDataException Bad(string path, string what) => new($"{path} is not a valid PNG: {what}.");
}
