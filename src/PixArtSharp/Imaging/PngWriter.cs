using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace PixArtSharp.Imaging;

/// <summary>An image could not be written; the message names the path and what to do.</summary>
public sealed class ImageWriteException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>
/// Writes 8-bit RGB PNGs (non-interlaced) with text metadata, atomically: the file is written beside its
/// destination under a temporary name, flushed to disk, then renamed, so a reader never sees a half image and a
/// failed write leaves nothing behind.
/// </summary>
public static class PngWriter
{
    internal static readonly byte[] Signature = [137, 80, 78, 71, 13, 10, 26, 10];

    /// <summary>
    /// Writes an 8-bit RGB image as a PNG file, atomically (a temporary file renamed into place); ImageWriteException
    /// when the file cannot be written.
    /// </summary>
    /// <param name="path">The PNG file to create or replace.</param>
    /// <param name="rgb">height × width × 3 bytes, row-major (HWC), as an image tensor's bytes.</param>
    /// <param name="width">Width in pixels.</param>
    /// <param name="height">Height in pixels.</param>
    /// <param name="text">Metadata chunks in order: tEXt where the text is printable Latin-1, iTXt (UTF-8) otherwise.
    /// Control characters are made visible (<see cref="SanitizeText"/>), so no text fails the write.</param>
    public static void Write(string path, ReadOnlySpan<byte> rgb, int width, int height, IReadOnlyList<(string Keyword, string Text)>? text = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (width < 1 || height < 1 || (long)width * 3 + 1 > int.MaxValue)
            throw new ArgumentOutOfRangeException(width < 1 ? nameof(width) : nameof(height), $"The image size {width}×{height} is not a positive size a PNG can hold.");
        if (rgb.Length != (long)width * height * 3)
            throw new ArgumentException($"rgb holds {rgb.Length} bytes, but a {width}×{height} RGB image needs {(long)width * height * 3}.", nameof(rgb));
        WriteBytes(path, Encode(rgb, width, height, text ?? []));
    }

    /// <summary>Writes already encoded PNG bytes (<see cref="Encode"/>) atomically, as <see cref="Write"/> does.</summary>
    public static void WriteBytes(string path, byte[] png)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(png);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? ".";
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                fs.Write(png);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
            string why = e switch
            {
                DirectoryNotFoundException => $"the folder {dir} does not exist. Create it, or choose another output path.",
                UnauthorizedAccessException => $"there is no permission to write in {dir}. Choose a writable output path.",
                _ when Directory.Exists(full) => "a folder of that name exists. Give a file name (e.g. out.png).",
                _ => $"{e.Message}. Check that {dir} exists, is writable and has free space, or choose another output path.",
            };
            throw new ImageWriteException($"Cannot write the image {full}: {why}", e);
        }
    }

    /// <summary>The PNG bytes (signature, IHDR, text chunks, IDAT, IEND).</summary>
    public static byte[] Encode(ReadOnlySpan<byte> rgb, int width, int height, IReadOnlyList<(string Keyword, string Text)> text)
    {
        if (width < 1 || height < 1 || (long)width * 3 + 1 > int.MaxValue)
            throw new ArgumentOutOfRangeException(width < 1 ? nameof(width) : nameof(height), $"The image size {width}×{height} is not a positive size a PNG can hold.");
        if (rgb.Length != (long)width * height * 3)
            throw new ArgumentException($"rgb holds {rgb.Length} bytes, but a {width}×{height} RGB image needs {(long)width * height * 3}.", nameof(rgb));
        foreach (var (k, t) in text)
            CheckTextChunk(k, t);
        using var ms = new MemoryStream();
        ms.Write(Signature);
        Span<byte> ihdr = stackalloc byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr[4..], height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // colour type: truecolour (RGB)
        ihdr[10] = 0; // compression: deflate
        ihdr[11] = 0; // filter method 0 (adaptive, five types)
        ihdr[12] = 0; // no interlace
        WriteChunk(ms, "IHDR", ihdr);
        foreach (var (k, raw) in text)
        {
            string t = SanitizeText(raw);
            WriteChunk(ms, IsLatin1Text(t) ? "tEXt" : "iTXt", TextChunkData(k, t));
        }
        WriteChunk(ms, "IDAT", CompressScanlines(rgb, width, height));
        WriteChunk(ms, "IEND", []);
        return ms.ToArray();
    }

    private static void CheckTextChunk(string keyword, string text)
    {
        // PNG keywords: 1–79 printable Latin-1 characters, no leading, trailing or doubled spaces.
        if (keyword.Length is < 1 or > 79 || keyword.Any(c => c is < (char)32 or > (char)126 and < (char)161 or > (char)255)
            || keyword.StartsWith(' ') || keyword.EndsWith(' ') || keyword.Contains("  ", StringComparison.Ordinal))
            throw new ArgumentException($"'{keyword}' is not a valid PNG text keyword (1–79 printable Latin-1 characters, single inner spaces).", nameof(text));
        ArgumentNullException.ThrowIfNull(text);
    }

    /// <summary>
    /// The text as PNG metadata can hold it: a prompt may carry any character, but tEXt/iTXt cannot hold NUL and
    /// readers choke on other control characters. Line feeds and tabs are kept; every other C0 control character
    /// and DEL becomes its visible Unicode "control picture" (NUL → ␀ U+2400, ESC → ␛ U+241B, DEL → ␡ U+2421); C1
    /// controls and unpaired surrogates become U+FFFD. Text without such characters is returned as it is. This is
    /// applied on every write, so a prompt can never fail the write after the work is done.
    /// </summary>
    internal static string SanitizeText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        static bool Clean(string s)
        {
            foreach (char c in s)
                if (c < 32 && c is not ('\n' or '\t') || c is >= (char)0x7F and <= (char)0x9F || char.IsSurrogate(c)) return false;
            return true;
        }
        if (Clean(text)) return text;
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c is '\n' or '\t') sb.Append(c);
            else if (c < 32) sb.Append((char)(0x2400 + c));
            else if (c == 0x7F) sb.Append('\u2421');
            else if (c is >= (char)0x80 and <= (char)0x9F) sb.Append('\uFFFD');
            else if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { sb.Append(c).Append(text[++i]); }
            else if (char.IsSurrogate(c)) sb.Append('\uFFFD');
            else sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>tEXt holds Latin-1 printable text and line feeds; anything else goes to iTXt as UTF-8.</summary>
    private static bool IsLatin1Text(string s) => s.All(c => c == '\n' || c is >= (char)32 and <= (char)126 || c is >= (char)161 and <= (char)255);

    private static byte[] TextChunkData(string keyword, string text)
    {
        var latin1 = Encoding.Latin1;
        if (IsLatin1Text(text))
            return [.. latin1.GetBytes(keyword), 0, .. latin1.GetBytes(text)];
        // iTXt: keyword \0, compression flag 0, method 0, empty language tag \0, empty translated keyword \0, UTF-8 text.
        return [.. latin1.GetBytes(keyword), 0, 0, 0, 0, 0, .. Encoding.UTF8.GetBytes(text)];
    }

    /// <summary>
    /// Filters each row with the type (0–4) whose output has the smallest sum of |signed bytes| (libpng's
    /// heuristic), then deflates everything as one zlib stream.
    /// </summary>
    private static byte[] CompressScanlines(ReadOnlySpan<byte> rgb, int width, int height)
    {
        int stride = width * 3;
        var candidates = new byte[5][];
        for (int f = 0; f < 5; f++) candidates[f] = new byte[stride];
        var zeros = new byte[stride];
        using var output = new MemoryStream();
        using (var z = new ZLibStream(output, CompressionLevel.Optimal, leaveOpen: true))
        {
            for (int y = 0; y < height; y++)
            {
                var row = rgb.Slice(y * stride, stride);
                var prior = y == 0 ? zeros : rgb.Slice((y - 1) * stride, stride);
                int best = 0;
                long bestScore = long.MaxValue;
                for (int f = 0; f < 5; f++)
                {
                    Filter(f, row, prior, candidates[f]);
                    long score = 0;
                    foreach (byte b in candidates[f]) score += b < 128 ? b : 256 - b;
                    if (score < bestScore) { bestScore = score; best = f; }
                }
                z.WriteByte((byte)best);
                z.Write(candidates[best]);
            }
        }
        return output.ToArray();
    }

    private static void Filter(int type, ReadOnlySpan<byte> row, ReadOnlySpan<byte> prior, Span<byte> dst)
    {
        const int bpp = 3;
        for (int i = 0; i < row.Length; i++)
        {
            int a = i >= bpp ? row[i - bpp] : 0, b = prior[i], c = i >= bpp ? prior[i - bpp] : 0;
            int predictor = type switch
            {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) >> 1,
                _ => Paeth(a, b, c),
            };
            dst[i] = (byte)(row[i] - predictor);
        }
    }

    internal static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    private static void WriteChunk(Stream s, string type, ReadOnlySpan<byte> data)
    {
        Span<byte> head = stackalloc byte[8];
        BinaryPrimitives.WriteInt32BigEndian(head, data.Length);
        Encoding.ASCII.GetBytes(type, head[4..]);
        s.Write(head);
        s.Write(data);
        uint crc = Crc32.Update(Crc32.Update(0xFFFFFFFFu, head[4..]), data) ^ 0xFFFFFFFFu;
        Span<byte> tail = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(tail, crc);
        s.Write(tail);
    }
}

/// <summary>CRC-32 (ISO 3309, polynomial 0xEDB88320 reflected) as PNG chunks use it.</summary>
internal static class Crc32
{
    private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    /// <summary>Continues a running CRC (start with 0xFFFFFFFF, finish by xor with 0xFFFFFFFF).</summary>
    public static uint Update(uint crc, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    public static uint Compute(ReadOnlySpan<byte> data) => Update(0xFFFFFFFFu, data) ^ 0xFFFFFFFFu;
}
